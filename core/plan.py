"""A plan: where a model's bytes go on this machine, and how fast it will run. Made by
``core.planner``; shown by the Presets, Models and Resources tabs and by ``app.py plan``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from core.hardware import GIB, Hardware, markdown_safe_name

Fit = Literal["full_gpu", "partial", "cpu_only", "no_fit"]
FIT_LABELS = {"full_gpu": "Full GPU", "partial": "Partial", "cpu_only": "CPU only", "no_fit": "Does not fit"}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes by purpose on one device (a GPU, or host RAM)."""
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    overhead: int = 0  # CUDA context and runtime, or host-side buffers

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead


@dataclass(frozen=True)
class DevicePlan:
    """One GPU's share of a plan on a machine with several (``core.multi_gpu``)."""
    index: int                   # the GPU's index (NVML order = llama.cpp's with CUDA_DEVICE_ORDER=PCI_BUS_ID)
    name: str
    memory: MemoryBreakdown
    usable_bytes: int            # its free VRAM less the planner's margin
    first_block: int = 0         # the blocks it holds: first_block .. first_block + n_blocks - 1
    n_blocks: int = 0
    output: bool = False         # it holds the output head
    main: bool = False           # llama.cpp's main GPU (row split: small tensors and results)

    @property
    def n_layers(self) -> int:
        """Layers as llama.cpp counts them: blocks plus the output head."""
        return self.n_blocks + (1 if self.output else 0)


@dataclass(frozen=True)
class Plan:
    fit: Fit
    backend: str                 # "llama_cpp" | "transformers"
    n_layer: int
    n_gpu_layers: int            # llama.cpp meaning: output head + (n-1) blocks; n_layer+1 = all
    n_ctx: int
    kv_type: str
    flash_attn: bool
    gpu: MemoryBreakdown         # on GPU 0 (all zeros when nothing is offloaded)
    cpu: MemoryBreakdown         # in host RAM
    tokens_per_s: float          # predicted decode speed at batch 1
    reasons: tuple[str, ...] = ()
    quantization: str = ""       # e.g. "Q4_K_M", "NF4"
    goal: str = ""               # "fastest" | "context" | "" (a given configuration)
    extra: dict = field(default_factory=dict)  # backend specifics, e.g. transformers max_memory
    warning: str = ""            # said before and after the load: see ``cpu_fallback_warning``
    # several GPUs: ``gpu`` above is their sum; each GPU's share and the split llama.cpp is given
    devices: tuple[DevicePlan, ...] = ()
    split_mode: str = ""         # "layer" | "row" | "none" ("" = one GPU or none)
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0
    kv_placement: str = "gpu"    # "gpu": each layer's KV cache on its device; "ram": all of it in RAM (offload_kqv off)
    n_cpu_moe: int = 0           # expert offload: the routed experts of blocks 0..n_cpu_moe-1 in RAM (--n-cpu-moe)

    @property
    def vram_bytes(self) -> int:
        return self.gpu.total

    @property
    def ram_bytes(self) -> int:
        return self.cpu.total

    @property
    def fit_label(self) -> str:
        if self.fit == "partial" and self.n_cpu_moe and self.n_gpu_layers == self.n_layer + 1:
            return f"GPU + experts of {self.n_cpu_moe}/{self.n_layer} layers in RAM"
        if self.fit == "partial":
            return f"Partial {self.n_gpu_layers} of {self.n_layer + 1} layers"
        return FIT_LABELS[self.fit]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(vram_bytes=self.vram_bytes, ram_bytes=self.ram_bytes, fit_label=self.fit_label)
        for device, plan in zip(data["devices"], self.devices):
            device.update(total_bytes=plan.memory.total, n_layers=plan.n_layers)
        return data


def cpu_fallback_warning(plan: Plan, hw: Hardware) -> str:
    """What to tell a user whose machine has a GPU but whose model was planned onto the CPU only:
    why, how slow it will be, and what would put it on the GPU. "" when that is not the case."""
    if plan.fit != "cpu_only" or not hw.gpus:
        return ""
    gpu = hw.gpus[0]
    speed = (f"expect about {plan.tokens_per_s:.2g} tokens/s" if plan.tokens_per_s
             else "expect it to be much slower than on the GPU")
    if plan.backend == "llama_cpp" and not hw.llama_gpu_offload:
        return (f"Runs on the CPU only: the installed llama.cpp has no GPU offload, so {gpu.name} stays unused; "
                f"{speed}. Run the setup again where `nvcc` is installed to build it with CUDA.")
    holders = sorted((p for p in gpu.processes if p.used_bytes), key=lambda p: -p.used_bytes)
    held_by = (f", most of it held by {markdown_safe_name(holders[0].name)} (pid {holders[0].pid}, "
               f"{holders[0].used_bytes / GIB:.1f} GiB)" if holders else "")
    too_little = ("too little even for llama.cpp's CUDA buffers, so the GPU is hidden from the model's worker"
                  if plan.extra.get("hide_gpus") else "too little for any layer")
    others = "".join(f"; {g.name} (GPU{g.index}) has {g.free_bytes / GIB:.1f} of {g.total_bytes / GIB:.1f} GiB free"
                     for g in hw.gpus[1:])
    return (f"Runs on the CPU only: {gpu.name} has {gpu.free_bytes / GIB:.1f} of {gpu.total_bytes / GIB:.1f} GiB "
            f"free{held_by}{others}, {too_little}; {speed}. Free GPU memory (the Resources tab lists who holds it) "
            "and load again to use the GPU.")
