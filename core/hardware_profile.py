"""Hardware profiles: a described machine (YAML/JSON) turned into ``Hardware`` for what-if planning.

    name: RTX 3060 12 GB + 64 GB RAM
    gpus: [{name: NVIDIA GeForce RTX 3060, vram_gib: 12, free_vram_gib: 11.5, bandwidth_gb_s: 360}]
    # several GPUs: one entry each, or ``count: 2`` for identical ones; ``pcie_gen``/``pcie_lanes``
    # describe the link (row split and transformers offload cross it)
    ram_gib: 64
    cpu_cores: 8
    ram_bandwidth_gb_s: 40
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.hardware import GIB, GpuInfo, Hardware
from core.options import parse_file_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class GpuProfile(_Strict):
    name: str = Field(min_length=1, max_length=100)
    vram_gib: float = Field(gt=0, le=4096)
    free_vram_gib: Optional[float] = Field(None, gt=0, le=4096)
    bandwidth_gb_s: float = Field(gt=0, le=100_000)
    compute_capability: Optional[tuple[int, int]] = None
    count: int = Field(1, ge=1, le=16)
    pcie_gen: Optional[int] = Field(None, ge=1, le=6)
    pcie_lanes: Optional[int] = Field(None, ge=1, le=32)

    @model_validator(mode="after")
    def _free_within_total(self) -> "GpuProfile":
        if self.free_vram_gib is not None and self.free_vram_gib > self.vram_gib:
            raise ValueError("free_vram_gib is larger than vram_gib")
        return self


class HardwareProfile(_Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=500)
    gpus: tuple[GpuProfile, ...] = Field((), max_length=16)
    ram_gib: float = Field(gt=0, le=65536)
    available_ram_gib: Optional[float] = Field(None, gt=0, le=65536)
    cpu_cores: int = Field(ge=1, le=1024)
    ram_bandwidth_gb_s: float = Field(gt=0, le=10_000)
    cpu_flags: tuple[str, ...] = Field((), max_length=32)

    @model_validator(mode="after")
    def _at_most_16_gpus(self) -> "HardwareProfile":
        if sum(g.count for g in self.gpus) > 16:
            raise ValueError("at most 16 GPUs in all")
        return self

    def to_hardware(self, key: str = "") -> Hardware:
        each = [g for g in self.gpus for _ in range(g.count)]
        gpus = tuple(
            GpuInfo(index=i, name=g.name, total_bytes=int(g.vram_gib * GIB),
                    free_bytes=int((g.free_vram_gib if g.free_vram_gib is not None else g.vram_gib - 0.4) * GIB),
                    compute_capability=g.compute_capability, bandwidth_bytes_per_s=g.bandwidth_gb_s * 1e9,
                    pcie_gen=g.pcie_gen, pcie_width=g.pcie_lanes)
            for i, g in enumerate(each))
        available = self.available_ram_gib if self.available_ram_gib is not None else self.ram_gib * 0.9
        return Hardware(
            gpus=gpus, ram_total_bytes=int(self.ram_gib * GIB), ram_available_bytes=int(available * GIB),
            cpu_name=self.description or self.name, cpu_physical_cores=self.cpu_cores,
            cpu_logical_cores=self.cpu_cores, cpu_flags=frozenset(self.cpu_flags),
            ram_bandwidth_bytes_per_s=self.ram_bandwidth_gb_s * 1e9, llama_gpu_offload=bool(gpus),
            source=f"profile:{key or self.name}", label=self.name,
        )


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the field."""


def parse_profile(data: object, source: str) -> HardwareProfile:
    return parse_file_model(HardwareProfile, data, source, ProfileError)
