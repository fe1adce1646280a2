"""Per-GPU figures through NVML (nvidia-ml-py, imported as ``pynvml``).

Every call is guarded: a figure the GPU does not support (NVML_ERROR_NOT_SUPPORTED) becomes None;
any other NVML error becomes None plus a line in the sample's errors, and the next sample tries
again. If NVML cannot start (no driver, no library) the source reports why and gives no GPUs.
Only the Resources sampler's thread calls it: never the generation path.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, Protocol

from core.resources import GpuSample, VramProcess


class GpuSource(Protocol):
    def open(self) -> str:
        """Start; return "" when GPUs can be read, else why not (shown to the user)."""

    def sample(self, worker_pid: Optional[int], app_pid: Optional[int]) -> tuple[tuple[GpuSample, ...], list[str]]:
        """The GPUs now, and the errors met on the way."""

    def close(self) -> None: ...


class NvmlSource:
    """``nvml`` is the ``pynvml`` module (default) or anything with the same functions, e.g. a fake in tests."""

    def __init__(self, nvml: Any = None, process_name: Callable[[int], str] = lambda pid: "",
                 pcie: bool = True) -> None:
        self._nvml = nvml
        self._process_name = process_name
        self._pcie = pcie  # each PCIe counter read waits ~20 ms inside the driver
        self._handles: list[tuple[int, Any, str]] = []
        self._open = False

    def open(self) -> str:
        try:
            if self._nvml is None:
                self._nvml = importlib.import_module("pynvml")
        except ImportError:
            return "CPU only: nvidia-ml-py (pynvml) is not installed, so GPUs cannot be read."
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return f"CPU only: no NVIDIA driver answered (NVML: {exc})."
        except OSError as exc:
            return f"CPU only: the NVIDIA management library failed to load ({exc})."
        self._open = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            return f"CPU only: NVML started but cannot count GPUs ({exc})."
        errors: list[str] = []
        for i in range(count):
            handle = self._call(errors, f"GPU{i}", "handle", nvml.nvmlDeviceGetHandleByIndex, i)
            if handle is not None:
                name = self._call(errors, f"GPU{i}", "name", nvml.nvmlDeviceGetName, handle)
                self._handles.append((i, handle, name.decode() if isinstance(name, bytes) else (name or f"GPU {i}")))
        if not self._handles:
            return "CPU only: NVML works but found no usable GPU" + (f" ({'; '.join(errors)})." if errors else ".")
        return ""

    def _call(self, errors: list[str], gpu: str, what: str, fn: Callable, *args):
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) != self._nvml.NVML_ERROR_NOT_SUPPORTED:
                errors.append(f"{gpu} {what}: {exc}")
            return None
        except Exception as exc:  # a broken binding must not stop the sampler
            errors.append(f"{gpu} {what}: {type(exc).__name__}: {exc}")
            return None

    def _processes(self, errors: list[str], gpu: str, handle, worker_pid, app_pid) -> Optional[tuple[VramProcess, ...]]:
        nvml, before = self._nvml, len(errors)
        compute = self._call(errors, gpu, "compute processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        graphics = self._call(errors, gpu, "graphics processes", nvml.nvmlDeviceGetGraphicsRunningProcesses, handle)
        if len(errors) > before or (compute is None and graphics is None):
            return None  # half a list would hide the worker or another process: say "unknown" instead
        used: dict[int, Optional[int]] = {}
        for proc in (compute or []) + (graphics or []):
            pid, mem = int(proc.pid), getattr(proc, "usedGpuMemory", None)
            mem, prev = (None if mem is None else int(mem)), used.get(pid)
            # A process in both lists holds the same memory once: keep the larger known figure.
            used[pid] = mem if prev is None else (prev if mem is None else max(prev, mem))
        return tuple(VramProcess(pid, self._process_name(pid), mem,
                                 "worker" if pid == worker_pid else "app" if pid == app_pid else "")
                     for pid, mem in sorted(used.items()))

    def sample(self, worker_pid: Optional[int] = None, app_pid: Optional[int] = None
               ) -> tuple[tuple[GpuSample, ...], list[str]]:
        nvml, errors, out = self._nvml, [], []
        for i, handle, name in self._handles:
            gpu = f"GPU{i}"

            def get(what, fn, *args):
                return self._call(errors, gpu, what, fn, handle, *args)

            mem = get("memory", nvml.nvmlDeviceGetMemoryInfo)
            util = get("utilisation", nvml.nvmlDeviceGetUtilizationRates)
            power = get("power", nvml.nvmlDeviceGetPowerUsage)
            limit = get("power limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
            tx = get("PCIe TX", nvml.nvmlDeviceGetPcieThroughput, nvml.NVML_PCIE_UTIL_TX_BYTES) if self._pcie else None
            rx = get("PCIe RX", nvml.nvmlDeviceGetPcieThroughput, nvml.NVML_PCIE_UTIL_RX_BYTES) if self._pcie else None
            out.append(GpuSample(
                index=i, name=name,
                memory_used_bytes=int(mem.used) if mem is not None else None,
                memory_total_bytes=int(mem.total) if mem is not None else None,
                util_percent=float(util.gpu) if util is not None else None,
                memory_util_percent=float(util.memory) if util is not None else None,
                temperature_c=_num(get("temperature", nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU)),
                power_w=power / 1000 if power is not None else None,
                power_limit_w=limit / 1000 if limit is not None else None,
                sm_clock_mhz=get("SM clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
                memory_clock_mhz=get("memory clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
                pcie_tx_bytes_s=tx * 1024.0 if tx is not None else None,  # NVML reports KB/s
                pcie_rx_bytes_s=rx * 1024.0 if rx is not None else None,
                processes=self._processes(errors, gpu, handle, worker_pid, app_pid)))
        return tuple(out), errors

    def close(self) -> None:
        if self._open:
            self._open = False
            self._handles = []
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass  # shutting down: nothing left to report to


def _num(value) -> Optional[float]:
    return None if value is None else float(value)
