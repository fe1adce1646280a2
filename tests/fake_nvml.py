"""A fake NVML with pynvml's function names, constants and error classes (there is no GPU here).

Each GPU is a dict of figures; a figure left out raises NVMLError_NotSupported, as a GPU that lacks
it does. ``fail[(index, function)] = code`` makes that call raise ``NVMLError(code)`` from then on
(an error mid-run); ``calls`` records which thread made each call.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pynvml

MIB = 1 << 20


def gpu(name="NVIDIA H100 80GB HBM3", used_mib=1000, total_mib=81559, util=10, mem_util=5, temp=40, power_mw=90000,
        limit_mw=700000, sm=1980, mem=2619, tx_kb=100, rx_kb=200, compute=(), graphics=(), cc=(9, 0), bus_bits=5120,
        pcie_gen=5, pcie_width=16, **drop) -> dict:
    """A GPU's figures; pass ``drop_x=True`` to leave figure x out (unsupported)."""
    figures = dict(name=name, memory=(used_mib * MIB, total_mib * MIB), util=(util, mem_util), temp=temp,
                   power=power_mw, limit=limit_mw, sm=sm, mem=mem, tx=tx_kb, rx=rx_kb, cc=cc, bus=bus_bits,
                   pcie_gen=pcie_gen, pcie_width=pcie_width,
                   compute=[SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in compute],
                   graphics=[SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in graphics])
    for key in drop:
        figures.pop(key.removeprefix("drop_"))
    return figures


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM, NVML_CLOCK_MEM = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM
    NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = pynvml.NVML_PCIE_UTIL_TX_BYTES, pynvml.NVML_PCIE_UTIL_RX_BYTES

    def __init__(self, gpus: list[dict], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.fail: dict[tuple[int, str], int] = {}
        self.calls: list[tuple[str, str]] = []  # (function, thread name)
        self.shut_down = False

    def _get(self, fn: str, handle: int, key: str):
        self.calls.append((fn, threading.current_thread().name))
        code = self.fail.get((handle, fn))
        if code is not None:
            raise pynvml.NVMLError(code)
        if key not in self.gpus[handle]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.gpus[handle][key]

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self._get("nvmlDeviceGetName", h, "name")

    def nvmlDeviceGetMemoryInfo(self, h):
        used, total = self._get("nvmlDeviceGetMemoryInfo", h, "memory")
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h):
        g, m = self._get("nvmlDeviceGetUtilizationRates", h, "util")
        return SimpleNamespace(gpu=g, memory=m)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._get("nvmlDeviceGetTemperature", h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._get("nvmlDeviceGetPowerUsage", h, "power")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._get("nvmlDeviceGetEnforcedPowerLimit", h, "limit")

    def nvmlDeviceGetClockInfo(self, h, clock):
        return self._get("nvmlDeviceGetClockInfo", h, "sm" if clock == self.NVML_CLOCK_SM else "mem")

    def nvmlDeviceGetPcieThroughput(self, h, counter):
        return self._get("nvmlDeviceGetPcieThroughput", h, "tx" if counter == self.NVML_PCIE_UTIL_TX_BYTES else "rx")

    def nvmlSystemGetDriverVersion(self):
        return "580.95.05"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 13000

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self._get("nvmlDeviceGetCudaComputeCapability", h, "cc")

    def nvmlDeviceGetMemoryBusWidth(self, h):
        return self._get("nvmlDeviceGetMemoryBusWidth", h, "bus")

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        return self._get("nvmlDeviceGetMaxClockInfo", h, "sm" if clock == self.NVML_CLOCK_SM else "mem")

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return self._get("nvmlDeviceGetMaxPcieLinkGeneration", h, "pcie_gen")

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return self._get("nvmlDeviceGetMaxPcieLinkWidth", h, "pcie_width")

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return self._get("nvmlDeviceGetComputeRunningProcesses", h, "compute")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return self._get("nvmlDeviceGetGraphicsRunningProcesses", h, "graphics")
