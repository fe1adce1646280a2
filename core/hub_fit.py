"""Will it fit, before a byte of weights is downloaded: a plan per GGUF file (from its header) or per
transformers quantisation (from config.json and the safetensors headers), and the longest context
that still fits. Pure: the shapes come from ``services.hub`` (remote) or the files on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from core.hardware import Hardware
from core.hf_memory import HfMemorySettings, estimate_memory
from core.hf_multi_gpu import device_plans, over_several_gpus
from core.hf_model_shape import ModelDims, TensorInfo
from core.hf_support import HfSupport, quantization_problem, resolve_compute_dtype
from core.hub_files import choose_best
from core.plan import MemoryBreakdown, Plan
from core.planner import Calibration

MIB = 1 << 20
GPU_MARGIN_BYTES = 512 * MIB     # as the transformers loader keeps free (backends/hf_loading.py)
PCIE_BYTES_PER_S = 16e9          # offloaded modules cross PCIe on every token (PCIe 4 x16, effective)
HF_LABELS = {"nf4": "NF4 (4-bit)", "int8": "8-bit", "gptq": "GPTQ", "bf16": "bf16", "fp16": "fp16"}
HF_SPEED_NOTE = ("tokens/s is a memory-bandwidth bound for transformers (not calibrated): real decode is "
                 "slower, bitsandbytes on a CPU much slower")


@dataclass(frozen=True)
class FitRow:
    """One downloadable choice with its plan on a machine."""
    key: str
    label: str
    quant: str
    size: int                   # bytes to download
    n_files: int = 1
    plan: Optional[Plan] = None
    best_ctx: int = 0           # the longest context that keeps the fit (0 when nothing fits)
    problem: str = ""           # why there is no plan
    header_bytes: int = 0       # bytes read from the Hub to plan it


def hf_quantizations(quant_method: str) -> tuple[tuple[str, ...], str]:
    """The quantisations a checkpoint can load with, or why none (its own message)."""
    if quant_method == "gptq":
        return ("gptq",), ""
    if quant_method:
        return (), quantization_problem("nf4", quant_method, HfSupport(), on_gpu=True) or ""
    return ("nf4", "int8", "bf16"), ""


def _support(hw: Hardware) -> HfSupport:
    gpu = hw.gpus[0] if hw.gpus else None
    return HfSupport(cuda=gpu is not None, compute_capability=gpu.compute_capability if gpu else None)


def plan_transformers(dims: ModelDims, tensors: Sequence[TensorInfo], hw: Hardware, quantization: str,
                      n_ctx: Optional[int] = None, cal: Calibration = Calibration()) -> Plan:
    """Where a transformers load would put the model (core.hf_memory) on ``hw``, and a speed bound."""
    ctx = n_ctx or min(4096, dims.max_position_embeddings)
    dtype = resolve_compute_dtype("auto", quantization, _support(hw))
    budget = max(0, hw.gpus[0].free_bytes - GPU_MARGIN_BYTES) if hw.gpus else 0
    settings = HfMemorySettings(quantization, dtype, n_ctx=ctx)
    est = estimate_memory(dims, tensors, settings, budget)
    reasons: list[str] = []
    multi = over_several_gpus(dims, tensors, settings, [g.free_bytes for g in hw.gpus], GPU_MARGIN_BYTES, est)
    if multi is not None:
        est = multi.estimate
        used = [s for s in multi.gpus if s.n_blocks]
        reasons.append(f"blocks over {len(used)} GPUs (" + ", ".join(f"GPU{s.index} {s.n_blocks}" for s in used)
                       + "), in proportion to each one's free memory")
    ram_room = hw.ram_available_bytes - cal.ram_margin_bytes
    if not est.fits:
        fit = "no_fit"
        reasons.append(f"needs {est.gpu.total / (1 << 30):.1f} GiB on the GPU even with blocks offloaded")
    elif est.cpu.total > ram_room:
        fit = "no_fit"
        reasons.append(f"needs {est.cpu.total / (1 << 30):.1f} GiB of RAM; {max(ram_room, 0) / (1 << 30):.1f} "
                       "GiB is available")
    else:
        fit = "cpu_only" if est.cpu_only else ("full_gpu" if est.fully_on_gpu else "partial")
    seconds = 0.0
    if est.cpu_only:
        seconds = est.cpu.weights / cal.cpu_bytes_per_s(hw)
    else:
        bandwidth = hw.gpus[0].bandwidth_bytes_per_s if hw.gpus else None
        if multi is not None:  # the GPUs run one after the other: the slowest one bounds the estimate
            bandwidth = min((hw.gpus[s.index].bandwidth_bytes_per_s or 0 for s in multi.gpus if s.n_blocks),
                            default=0) or None
        if bandwidth:
            seconds += (est.gpu.weights + est.gpu.kv_cache) / cal.gpu_bytes_per_s(bandwidth)
        seconds += est.cpu.weights / PCIE_BYTES_PER_S
        if not bandwidth:
            reasons.append("GPU bandwidth unknown: speed left out")
            seconds = 0.0
    if hw.gpus and not est.cpu_only:
        reasons.append("assumes a CUDA build of torch in the worker")
    reasons.append(HF_SPEED_NOTE)
    on_gpu = 0 if est.cpu_only else est.gpu_blocks + 1
    return Plan(fit=fit, backend="transformers", n_layer=est.n_blocks, n_gpu_layers=on_gpu, n_ctx=ctx,
                kv_type=dtype, flash_attn=False, gpu=est.gpu if not est.cpu_only else MemoryBreakdown(),
                cpu=est.cpu, tokens_per_s=round(1 / seconds, 2) if seconds > 0 else 0.0, reasons=tuple(reasons),
                quantization=quantization, extra={"device_map_blocks_on_gpu": est.gpu_blocks,
                                                  **({"max_memory": multi.max_memory} if multi else {})},
                devices=device_plans(multi, [g.name for g in hw.gpus]) if multi else ())


def transformers_best_ctx(dims: ModelDims, tensors: Sequence[TensorInfo], hw: Hardware, quantization: str,
                          base: Plan, cal: Calibration = Calibration()) -> int:
    """The longest context (up to the trained one) whose plan keeps ``base``'s fit class."""
    if base.fit == "no_fit":
        return 0
    top = dims.max_position_embeddings
    for ctx in sorted({top, *(c for c in (2 ** k for k in range(11, 22)) if base.n_ctx < c < top)}, reverse=True):
        plan = plan_transformers(dims, tensors, hw, quantization, ctx, cal)
        if plan.fit == base.fit:
            return ctx
    return base.n_ctx


def transformers_rows(dims: ModelDims, tensors: Sequence[TensorInfo], quant_method: str, size: int, n_files: int,
                      hw: Hardware, header_bytes: int = 0, cal: Calibration = Calibration()) -> list[FitRow]:
    """One row per quantisation the checkpoint can load with (or one row saying why none)."""
    options, problem = hf_quantizations(quant_method)
    if not options:
        return [FitRow("refused", "cannot load", quant_method, size, n_files, problem=problem,
                       header_bytes=header_bytes)]
    rows = []
    for q in options:
        plan = plan_transformers(dims, tensors, hw, q, cal=cal)
        rows.append(FitRow(q, HF_LABELS[q], q, size, n_files, plan,
                           transformers_best_ctx(dims, tensors, hw, q, plan, cal), header_bytes=header_bytes))
    return rows


def best_row(rows: Sequence[FitRow]) -> Optional[str]:
    """The key of the row to pre-select (``core.hub_files.choose_best``). The quality proxy is the
    file size for GGUF files; for transformers rows (one download, several ways to load it) it is
    the bytes of weights as loaded (bf16 over 8-bit over NF4)."""
    def quality(r: FitRow) -> int:
        if r.plan is not None and r.plan.backend == "transformers":
            return r.plan.gpu.weights + r.plan.cpu.weights
        return r.size
    return choose_best([(r.key, r.plan, quality(r)) for r in rows])
