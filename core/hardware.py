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
    driver_version: str = ""
    cuda_version: str = ""
    processes: tuple[GpuProcess, ...] = ()


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
