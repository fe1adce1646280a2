"""What the GPU benchmarks share: NVML readings (a worker's VRAM, a device's used memory) and one
measured load (load, two greedy replies of which the first warms up, readings while loaded, unload,
wait until the device's memory is back).

Only the standard library here, and pynvml imported when called: the GPU image has no gradio or
fastapi, and without NVML (a CPU, a container that hides PIDs) the readings are None / {}.
The backend, spec and sampling options come from the caller (WorkerBackend, LoadSpec, SamplingOptions).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

MIB = 1 << 20
PROMPT = [{"role": "user", "content": "Count from one to one hundred, in words, separated by commas."}]


def nvml_used_by(pid: Optional[int]) -> int | None:
    """The worker's VRAM on GPU 0 as NVML reports it (None without NVML, or when a container hides PIDs)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory:
                return int(proc.usedGpuMemory)
    except Exception:
        return None
    return None


def nvml_per_gpu(pid: Optional[int]) -> dict[int, Optional[int]]:
    """The worker's VRAM on each GPU (absent GPUs: 0; no NVML or PID hidden: {})."""
    try:
        import pynvml

        pynvml.nvmlInit()
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            out[i] = next((int(p.usedGpuMemory or 0) for p in procs if p.pid == pid), 0)
        return out
    except Exception:
        return {}


def device_used() -> int | None:
    """GPU 0's used memory (None without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:
        return None


def devices_used() -> dict[int, int]:
    """Each GPU's used memory ({} without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return {i: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used)
                for i in range(pynvml.nvmlDeviceGetCount())}
    except Exception:
        return {}


def wait_device_back(baseline: int | None, timeout: float = 20.0) -> None:
    """After an unload, wait until GPU 0's memory is back near the baseline."""
    deadline = time.monotonic() + timeout
    while baseline is not None and time.monotonic() < deadline:
        used = device_used()
        if used is None or used <= baseline + 64 * MIB:
            return
        time.sleep(0.2)


def wait_devices_back(baseline: dict[int, int], timeout: float = 20.0) -> None:
    """After an unload, wait until every GPU's memory is back near its baseline."""
    deadline = time.monotonic() + timeout
    while baseline and time.monotonic() < deadline:
        now = devices_used()
        if all(now.get(i, 0) <= b + 64 * MIB for i, b in baseline.items()):
            return
        time.sleep(0.2)


def stream_stats(backend: Any, prompt: list[dict] | str, sampling: Any) -> Any:
    """Streams one reply to its end; its GenerationStats."""
    stream = backend.stream_chat(prompt, sampling, threading.Event())
    for _ in stream:
        pass
    return stream.stats


def measured_load(backend: Any, spec: Any, sampling: Any, while_loaded: Optional[Callable[[Any], dict]] = None,
                  *, per_gpu: bool = False, prompt: list[dict] | str = PROMPT) -> tuple[Any, dict]:
    """Loads ``spec`` in ``backend``, streams ``prompt`` twice (the first reply warms up), calls
    ``while_loaded(info)``, reads NVML, unloads (also on an error) and waits until the device's
    memory is back. Returns the load's info and a row: load_s, tokens_per_s (the second reply's
    decode speed), nvml_worker_bytes (per GPU with ``per_gpu``), device_delta_bytes (GPU 0's used
    memory while loaded minus before; not with ``per_gpu``) and what ``while_loaded`` returned."""
    baseline = devices_used() if per_gpu else device_used()
    started = time.monotonic()
    try:
        info = backend.load(spec)
        load_s = time.monotonic() - started
        speeds = [stream_stats(backend, prompt, sampling).decode_tokens_per_s for _ in range(2)]
        extra = while_loaded(info) if while_loaded else {}
        row = {"load_s": round(load_s, 2), "tokens_per_s": speeds[-1]}
        if per_gpu:
            row["nvml_worker_bytes"] = nvml_per_gpu(info.worker_pid)
        else:
            row["nvml_worker_bytes"] = nvml_used_by(info.worker_pid)
            after = device_used()
            row["device_delta_bytes"] = after - baseline if after is not None and baseline is not None else None
    finally:
        backend.unload()
    if per_gpu:
        wait_devices_back(baseline)
    else:
        wait_device_back(baseline)
    return info, {**row, **extra}
