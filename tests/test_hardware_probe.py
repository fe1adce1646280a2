"""The hardware probe: a fake NVML (there is no GPU here) for GPUs, the real psutil for the rest."""
from __future__ import annotations

import sys
import types
from collections import namedtuple

import pytest

from services import hardware

Memory = namedtuple("Memory", "total free used")
Proc = namedtuple("Proc", "pid usedGpuMemory")


class NVMLError(Exception):
    pass


def fake_pynvml(gpus: list[dict], init_error: bool = False) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVML_CLOCK_MEM = 2

    def init():
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def field(name):
        def get(handle, *args):
            value = gpus[handle].get(name)
            if isinstance(value, Exception):
                raise value
            return value
        return get

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: "580.1"
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = field("name")
    m.nvmlDeviceGetMemoryInfo = field("memory")
    m.nvmlDeviceGetCudaComputeCapability = field("cc")
    m.nvmlDeviceGetMemoryBusWidth = field("bus")
    m.nvmlDeviceGetMaxClockInfo = lambda h, which: gpus[h]["mem_clock"]
    m.nvmlDeviceGetComputeRunningProcesses = field("procs")
    return m


def test_two_gpus_with_processes_and_bandwidth(monkeypatch):
    gpus = [dict(name=b"NVIDIA GeForce RTX 3060", memory=Memory(12 << 30, 11 << 30, 1 << 30), cc=(8, 6),
                 bus=192, mem_clock=7501, procs=[Proc(1, 512 << 20)]),
            dict(name="NVIDIA H100", memory=Memory(80 << 30, 79 << 30, 1 << 30), cc=(9, 0), bus=5120,
                 mem_clock=2619, procs=[])]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))
    found, notes = hardware.probe_gpus()
    assert notes == ()
    assert [g.name for g in found] == ["NVIDIA GeForce RTX 3060", "NVIDIA H100"]
    assert found[0].bandwidth_bytes_per_s == pytest.approx(360e9, rel=0.001)
    assert found[1].bandwidth_bytes_per_s == pytest.approx(3.35e12, rel=0.001)
    assert found[0].processes[0].used_bytes == 512 << 20 and found[0].cuda_version == "13.0"


def test_missing_fields_become_none(monkeypatch):
    gpus = [dict(name="Old GPU", memory=Memory(4 << 30, 4 << 30, 0), cc=NVMLError("Not Supported"),
                 bus=NVMLError("Not Supported"), mem_clock=1000, procs=NVMLError("Not Supported"))]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))
    found, _ = hardware.probe_gpus()
    assert found[0].compute_capability is None and found[0].bandwidth_bytes_per_s is None
    assert found[0].processes == ()


def test_no_driver_means_cpu_only_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=True))
    found, notes = hardware.probe_gpus()
    assert found == () and "no NVIDIA driver" in notes[0]


def test_real_probe_on_this_machine(tmp_path):
    hw = hardware.probe(tmp_path, measure_ram_bandwidth=False)
    assert hw.ram_total_bytes > 1 << 30 and hw.cpu_physical_cores >= 1
    assert hw.disk_free_bytes and hw.disk_free_bytes > 0
    if not hw.gpus:
        assert hw.notes and not hw.can_offload


def test_ram_bandwidth_is_measured():
    assert 1e9 < hardware.ram_bandwidth() < 2e12
