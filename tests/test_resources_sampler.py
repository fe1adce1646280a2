"""The Resources sampler: a fake NVML (several GPUs, missing figures, errors mid-run, no driver),
the real psutil source, and the background thread that samples only while someone watches."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pynvml
import pytest

from backends.manager import ModelManager
from core.generation import GenerationProgress, GenerationStats
from core.resources import GIB
from services.nvml_source import NvmlSource
from services.sampler import ResourceSampler, for_manager
from services.system_source import SystemSource
from tests.fake_nvml import MIB, FakeNvml, gpu

WORKER, APP, OTHER = 4242, 4343, 999


def names(pid: int) -> str:
    return {WORKER: "python", OTHER: "blender"}.get(pid, "")


def two_gpus() -> FakeNvml:
    return FakeNvml([
        gpu(used_mib=6000, compute=[(WORKER, 5000 * MIB), (OTHER, 512 * MIB)],
            graphics=[(OTHER, 512 * MIB), (APP, 64 * MIB)]),
        gpu(name="NVIDIA RTX 3060", used_mib=300, total_mib=12288, drop_power=True, drop_limit=True, drop_tx=True,
            drop_rx=True, drop_graphics=True),
    ])


def sampler_with(nvml, **kwargs) -> ResourceSampler:
    return ResourceSampler(SystemSource(), NvmlSource(nvml, process_name=names), worker_pid=lambda: WORKER,
                           app_pid=APP, **kwargs)


def test_several_gpus_with_their_figures_processes_and_the_worker_named():
    source = NvmlSource(two_gpus(), process_name=names)
    assert source.open() == ""
    gpus, errors = source.sample(WORKER, APP)
    assert errors == [] and [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA RTX 3060"]
    h100, rtx = gpus
    assert (h100.memory_used_bytes, h100.memory_total_bytes) == (6000 * MIB, 81559 * MIB)
    assert (h100.util_percent, h100.memory_util_percent, h100.temperature_c) == (10.0, 5.0, 40.0)
    assert (h100.power_w, h100.power_limit_w, h100.sm_clock_mhz, h100.memory_clock_mhz) == (90.0, 700.0, 1980, 2619)
    assert (h100.pcie_tx_bytes_s, h100.pcie_rx_bytes_s) == (100 * 1024, 200 * 1024)  # NVML says KB/s
    # The other process is in both lists (compute and graphics): counted once.
    assert [(p.pid, p.name, p.used_bytes, p.role) for p in h100.processes] == [
        (OTHER, "blender", 512 * MIB, ""), (WORKER, "python", 5000 * MIB, "worker"), (APP, "", 64 * MIB, "app")]
    assert h100.process_bytes("worker") == 5000 * MIB and [p.pid for p in h100.others()] == [OTHER]
    # Figures the second GPU does not support are None, without an error.
    assert (rtx.power_w, rtx.power_limit_w, rtx.pcie_tx_bytes_s, rtx.pcie_rx_bytes_s) == (None,) * 4
    assert rtx.processes == () and rtx.process_bytes("worker") is None
    assert rtx.memory_total_bytes == 12 * GIB


def test_errors_mid_run_are_reported_and_sampling_goes_on():
    nvml = two_gpus()
    sampler = sampler_with(nvml)
    first = sampler.sample_once()
    assert first.errors == () and first.gpus[0].temperature_c == 40.0
    nvml.fail[(0, "nvmlDeviceGetTemperature")] = pynvml.NVML_ERROR_GPU_IS_LOST
    nvml.fail[(1, "nvmlDeviceGetMemoryInfo")] = pynvml.NVML_ERROR_UNKNOWN
    nvml.fail[(0, "nvmlDeviceGetComputeRunningProcesses")] = pynvml.NVML_ERROR_NO_PERMISSION
    broken = sampler.sample_once()
    assert broken.gpus[0].temperature_c is None and broken.gpus[0].util_percent == 10.0
    assert broken.gpus[1].memory_used_bytes is None and broken.gpus[1].util_percent == 10.0
    # Half a process list would hide the worker: the list is unknown until both calls answer again.
    assert broken.gpus[0].processes is None and broken.gpus[1].processes == ()
    assert any("GPU0 temperature" in e and "GPU is lost" in e for e in broken.errors)
    assert any("GPU1 memory" in e for e in broken.errors)
    assert any("GPU0 compute processes" in e and "Permission" in e for e in broken.errors)
    nvml.fail.clear()
    again = sampler.sample_once()
    assert again.errors == () and again.gpus[0].temperature_c == 40.0 and again.seq == 3


def test_a_source_that_raises_outright_is_reported_and_cpu_figures_stay():
    class Exploding:
        def open(self):
            return ""

        def sample(self, worker_pid, app_pid):
            raise RuntimeError("driver went away")

        def close(self):
            pass

    sampler = ResourceSampler(SystemSource(), Exploding())
    sample = sampler.sample_once()
    assert sample.gpus == () and sample.system is not None and sample.system.ram_total_bytes > 0
    assert sample.errors == ("GPU: RuntimeError: driver went away",)


@pytest.mark.parametrize("code, reason", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
])
def test_no_driver_means_cpu_only_with_the_reason(code, reason):
    nvml = FakeNvml([gpu()], init_error=code)
    sample = sampler_with(nvml).sample_once()
    assert sample.gpus == () and sample.system is not None
    assert sample.gpu_note.startswith("CPU only") and reason in sample.gpu_note
    assert not any(fn.startswith("nvmlDevice") for fn, _ in nvml.calls)


def test_the_real_nvml_on_this_machine_degrades_to_cpu_only():
    sampler = ResourceSampler(SystemSource(), NvmlSource())
    sample = sampler.sample_once()
    assert sample.system is not None
    if sample.gpus:  # a machine with a driver: then the figures are real
        assert sample.gpus[0].memory_total_bytes
    else:
        assert sample.gpu_note.startswith("CPU only") and "NVML" in sample.gpu_note
    sampler.close()


def test_the_real_psutil_source():
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(64 << 20); import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        source = SystemSource()
        while psutil.Process(child.pid).memory_info().rss < 64 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        s = source.sample(child.pid)
        assert s.ram_total_bytes == psutil.virtual_memory().total
        assert 0 < s.ram_used_bytes < s.ram_total_bytes and 0 < s.ram_available_bytes < s.ram_total_bytes
        assert s.swap_used_bytes <= s.swap_total_bytes or s.swap_total_bytes == 0
        assert len(s.cpu_percent) == psutil.cpu_count() and all(0 <= p <= 100 for p in s.cpu_percent)
        assert s.app_rss_bytes == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)
        assert s.worker_rss_bytes >= 64 << 20
        assert source.process_name(os.getpid()).startswith("python")
    finally:
        child.kill()
        child.wait()
    assert source.sample(child.pid).worker_rss_bytes is None  # the worker is gone
    assert source.process_name(child.pid) == ""


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_the_thread_samples_only_while_watched_and_nvml_stays_on_it():
    nvml = two_gpus()
    sampler = sampler_with(nvml, interval_s=0.05, lease_s=0.5)
    assert sampler.status()["running"] is False and sampler.ticks == 0  # nothing starts before a viewer
    sampler.watch("browser-1")
    assert wait_until(lambda: sampler.ticks >= 3)
    sampler.unwatch("browser-1")
    time.sleep(0.15)
    stopped = sampler.ticks
    time.sleep(0.3)
    assert sampler.ticks == stopped and sampler.status()["viewers"] == 0
    # A browser that just goes away (closed page, hidden tab: no more ticks) stops it when its lease ends.
    sampler.watch("browser-2")
    assert wait_until(lambda: sampler.ticks >= stopped + 2)
    time.sleep(0.8)
    expired = sampler.ticks
    time.sleep(0.3)
    assert sampler.ticks == expired and sampler.status()["viewers"] == 0
    # A tick that was in flight when its tab was left does not start sampling again; opening does.
    sampler.unwatch("browser-3")
    sampler.watch("browser-3", unless_left=True)
    assert sampler.status()["viewers"] == 0
    sampler.watch("browser-3")
    assert sampler.status()["viewers"] == 1
    sampler.unwatch("browser-3")
    assert {thread for _, thread in nvml.calls} == {"resource-sampler"}
    samples = sampler.samples()
    assert [s.seq for s in samples] == list(range(1, expired + 1))
    assert sampler.status()["cpu_ms_per_tick"] > 0
    sampler.close()
    assert nvml.shut_down and not sampler.status()["running"]


def test_the_history_keeps_only_the_window():
    sampler = ResourceSampler(SystemSource(), None, interval_s=1.0, history_s=5.0)
    for _ in range(12):
        sampler.sample_once()
    assert [s.seq for s in sampler.samples()][-1] == 12 and len(sampler.samples()) <= 6


def test_generation_figures_come_from_the_manager_without_touching_a_worker():
    manager = ModelManager()
    sampler = for_manager(manager, gpu=NvmlSource(FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))
    idle = sampler.sample_once()
    assert idle.worker_pid is None and idle.generation.tokens_per_s is None and not idle.generation.active
    live = GenerationProgress(started=100.0, n_ctx=2048, prompt_tokens=20, completion_tokens=11,
                              first_token_at=100.25, last_token_at=101.25)
    manager._live = {1: live}  # what stream_chat sets while a reply streams (one entry per reply)
    busy = sampler.sample_once().generation
    assert busy.active and busy.tokens_per_s == pytest.approx(10.0) and busy.ttft_s == pytest.approx(0.25)
    assert (busy.context_used, busy.n_ctx) == (31, 2048)
    manager._live = {}
    manager._last_stats = GenerationStats(20, 50, 0.2, 42.0, 1.4, 2048, "stop")
    done = sampler.sample_once().generation
    assert not done.active and done.tokens_per_s == 42.0 and done.context_used == 70
    assert done.live_tokens_per_s == 0.0
    sampler.close()
