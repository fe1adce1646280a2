"""Probe this machine: NVIDIA GPUs through NVML, CPU and RAM through psutil. Never raises: without
a GPU or driver it reports CPU only and says why."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from core.hardware import GpuInfo, GpuProcess, Hardware
from core.hardware_profile import HardwareProfile, ProfileError, parse_profile
from services.yaml_files import DataFileError, load_data_file


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_gpus() -> tuple[tuple[GpuInfo, ...], tuple[str, ...]]:
    try:
        import pynvml
    except ImportError:
        return (), ("nvidia-ml-py is not installed: GPUs cannot be seen",)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return (), (f"no NVIDIA driver found ({exc}): CPU only",)
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}"
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GpuInfo(
                index=index, name=_text(pynvml.nvmlDeviceGetName(handle)), total_bytes=int(memory.total),
                free_bytes=int(memory.free), used_bytes=int(memory.used),
                compute_capability=_guard(lambda: tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))),
                bandwidth_bytes_per_s=_guard(lambda: _bandwidth(pynvml, handle)),
                # the link's best (an idle GPU drops its current link to gen 1 to save power)
                pcie_gen=_guard(lambda: int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle))),
                pcie_width=_guard(lambda: int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle))),
                driver_version=driver, cuda_version=cuda_text, processes=_processes(pynvml, handle)))
        return tuple(gpus), ()
    except pynvml.NVMLError as exc:
        return (), (f"NVML failed while reading the GPUs ({exc}): CPU only",)
    finally:
        _guard(pynvml.nvmlShutdown)


def _guard(fn):
    try:
        return fn()
    except Exception:  # a field this GPU or driver does not report
        return None


def _bandwidth(pynvml, handle) -> float:
    bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
    mem_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
    return bus_bits / 8 * mem_mhz * 1e6 * 2  # double data rate


def _processes(pynvml, handle) -> tuple[GpuProcess, ...]:
    import psutil

    found = []
    for proc in _guard(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []:
        try:
            name = psutil.Process(proc.pid).name()
        except psutil.Error:
            name = "?"
        found.append(GpuProcess(proc.pid, name, int(proc.usedGpuMemory or 0)))
    return tuple(found)


def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = {"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                          "amx_int8", "amx_bf16", "asimd", "sve"}
                return frozenset(flags & wanted)
    except OSError:
        pass
    return frozenset()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def ram_bandwidth(threads: Optional[int] = None, mib: int = 256) -> float:
    """Aggregate RAM copy bandwidth (bytes read per second), measured once per process with
    numpy copies on every physical core (numpy releases the GIL while copying)."""
    import numpy as np

    from services.cpu import physical_cores

    n = threads or physical_cores()
    size = mib * (1 << 20) // n
    sources = [np.ones(size, dtype=np.uint8) for _ in range(n)]
    targets = [np.empty_like(s) for s in sources]

    def copy(i: int) -> None:
        for _ in range(4):
            np.copyto(targets[i], sources[i])

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(copy, range(n)))  # warm-up: page in
        start = time.perf_counter()
        list(pool.map(copy, range(n)))
        seconds = time.perf_counter() - start
    # A copy reads and writes every byte: count both, as decode only reads.
    return 2 * 4 * size * n / seconds


@functools.lru_cache(maxsize=1)
def llama_gpu_offload() -> bool:
    """Whether the installed llama.cpp can offload to a GPU, asked in a child process so that this
    process never imports llama_cpp."""
    try:
        out = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip().endswith("True")


def probe(models_dir: Optional[Path] = None, measure_ram_bandwidth: bool = True) -> Hardware:
    import psutil

    gpus, notes = probe_gpus()
    memory = psutil.virtual_memory()
    disk_free = None
    if models_dir is not None:
        try:
            disk_free = shutil.disk_usage(models_dir if models_dir.exists() else models_dir.parent).free
        except OSError:
            pass
    offload = llama_gpu_offload() if gpus else False
    if gpus and not offload:
        notes += ("the installed llama.cpp was built without GPU offload: GGUF models run on the CPU "
                  "(rebuild: FITCHAT_CMAKE_ARGS=-DGGML_CUDA=on ./run.sh)",)
    return Hardware(
        gpus=gpus, ram_total_bytes=int(memory.total), ram_available_bytes=int(memory.available),
        swap_total_bytes=int(psutil.swap_memory().total), cpu_name=_cpu_name(),
        cpu_physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        cpu_logical_cores=psutil.cpu_count() or 1, cpu_flags=_cpu_flags(),
        ram_bandwidth_bytes_per_s=ram_bandwidth() if measure_ram_bandwidth else None,
        disk_free_bytes=disk_free, llama_gpu_offload=offload, source="probe", notes=notes,
    )


def load_profile(path: Path) -> Hardware:
    try:
        profile: HardwareProfile = parse_profile(load_data_file(path), path.name)
    except DataFileError as exc:
        raise ProfileError(str(exc)) from None
    return profile.to_hardware(path.stem)


def list_profiles(folder: Path) -> tuple[dict[str, Hardware], list[str]]:
    """Profiles by file stem, and one message per file that could not be used."""
    found, errors = {}, []
    for path in sorted(folder.glob("*.y*ml")) + sorted(folder.glob("*.json")):
        try:
            found[path.stem] = load_profile(path)
        except ProfileError as exc:
            errors.append(str(exc))
    return found, errors
