"""What the machine has, as plain data. Probed by ``services.hardware`` or loaded from a profile
(YAML/JSON) so that planning can be asked "what would fit on an RTX 3060 12 GB + 64 GB RAM?"."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional

GIB = 1 << 30


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_bytes: int


_NAME_UNSAFE = re.compile(r"[\\`*_{}\[\]<>()#|!~]")


def markdown_safe_name(name: str) -> str:
    """A process name without Markdown or HTML characters: another user picks it, the UI shows it."""
    return _NAME_UNSAFE.sub("", name or "") or "unknown"


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int = 0
    compute_capability: Optional[tuple[int, int]] = None
    bandwidth_bytes_per_s: Optional[float] = None  # peak memory bandwidth
    pcie_gen: Optional[int] = None    # PCIe link generation now (e.g. 4); None = not reported
    pcie_width: Optional[int] = None  # PCIe lanes now (e.g. 16)
    driver_version: str = ""
    cuda_version: str = ""
    processes: tuple[GpuProcess, ...] = ()


def pcie_bytes_per_s(gpu: GpuInfo) -> Optional[float]:
    """Usable one-way PCIe bandwidth of the GPU's link (about 80 % of the raw rate), or None."""
    if not gpu.pcie_gen or not gpu.pcie_width:
        return None
    per_lane = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.97e9, 5: 3.94e9, 6: 7.56e9}.get(gpu.pcie_gen)
    return per_lane * gpu.pcie_width * 0.8 if per_lane else None


def gpu_summary(gpus: tuple[GpuInfo, ...]) -> str:
    if not gpus:
        return "no GPU"
    names = [g.name for g in gpus]
    if len(set(names)) == 1 and len(names) > 1:
        return f"{len(names)} × {names[0]}"
    return " + ".join(names)


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GpuInfo, ...]
    ram_total_bytes: int
    ram_available_bytes: int
    swap_total_bytes: int = 0
    cpu_name: str = ""
    cpu_physical_cores: int = 1
    cpu_logical_cores: int = 1
    cpu_flags: frozenset[str] = field(default_factory=frozenset)  # e.g. {"avx2", "avx512f", "amx"}
    ram_bandwidth_bytes_per_s: Optional[float] = None
    disk_free_bytes: Optional[int] = None
    llama_gpu_offload: bool = False  # the installed llama.cpp can offload to a GPU
    source: str = "probe"           # "probe" or "profile:<name>"
    label: str = ""                 # a human name for a described machine
    notes: tuple[str, ...] = ()     # e.g. "no NVIDIA driver found: CPU only"

    @property
    def gpu_summary(self) -> str:
        """e.g. "2 × NVIDIA GeForce RTX 3090" or "NVIDIA GeForce RTX 3060 + NVIDIA GeForce RTX 4070"."""
        return gpu_summary(self.gpus)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def can_offload(self) -> bool:
        """A GPU exists and the runtime can use it."""
        return self.has_gpu and self.llama_gpu_offload

    def with_budget(self, vram_bytes: Optional[int] = None, ram_bytes: Optional[int] = None) -> "Hardware":
        """The same machine with free VRAM (on GPU 0) and available RAM capped, for what-if planning."""
        gpus = self.gpus
        if vram_bytes is not None and gpus:
            first = gpus[0]
            gpus = (replace(first, free_bytes=min(first.free_bytes, vram_bytes)), *gpus[1:])
        ram = self.ram_available_bytes if ram_bytes is None else min(self.ram_available_bytes, ram_bytes)
        return replace(self, gpus=gpus, ram_available_bytes=ram)
