"""What this machine's transformers stack can run, as plain data, and the decisions made from it:
the compute dtype, the attention implementation, and a plain message when a quantisation cannot
run here. Probed by ``backends.hf_loading.probe_support``; decided here so tests can ask "what if".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from core.hf_model_shape import TensorInfo, quantized_by_bnb

GPTQ_HINT = ("GPTQ checkpoints need the optional GPTQ extra: `.venv/bin/pip install -r requirements-gptq.txt` "
             "(optimum + gptqmodel). It is not installed by default because gptqmodel pulls a CUDA build of "
             "torch (about 6 GB); install it on a GPU machine.")
BNB_HINT = "`.venv/bin/pip install 'bitsandbytes>=0.50'`"
BNB_CPU_MIN = (0, 46)  # first bitsandbytes that runs 4-bit and 8-bit on the CPU
NF4_CPU_BLOCK_N = 32   # bitsandbytes' AVX512-BF16 NF4 kernel packs output rows by 32


@dataclass(frozen=True)
class HfSupport:
    cuda: bool = False
    compute_capability: Optional[tuple[int, int]] = None
    bnb_version: Optional[tuple[int, ...]] = None   # None: bitsandbytes does not import
    bnb_cuda: bool = False                          # bitsandbytes found its CUDA library
    gptq: bool = False                              # optimum and gptqmodel import
    flash_attn: bool = False                        # the flash_attn package is installed
    bnb_cpu_repacks_nf4: bool = False               # this CPU has AVX512-BF16: bnb repacks NF4 for it


def resolve_compute_dtype(option: str, quantization: str, support: HfSupport) -> str:
    """bf16 | fp16 for the matmuls and the unquantised tensors."""
    if quantization in ("bf16", "fp16"):
        return quantization
    if quantization == "gptq" and option == "auto":
        return "fp16"  # GPTQ kernels are written for fp16 scales
    if option != "auto":
        return option
    if support.cuda and support.compute_capability and support.compute_capability < (8, 0):
        return "fp16"
    return "bf16"


def resolve_attention(option: str, dtype: str, support: HfSupport) -> str:
    """The ``attn_implementation``; ValueError when flash_attention_2 is asked for and cannot run."""
    flash_ok = (support.flash_attn and support.cuda and dtype in ("bf16", "fp16")
                and (support.compute_capability or (0, 0)) >= (8, 0))
    if option == "flash_attention_2" and not flash_ok:
        why = ("the flash_attn package is not installed" if not support.flash_attn
               else "it needs a CUDA GPU of compute capability 8.0 or newer and fp16/bf16")
        raise ValueError(f"flash_attention_2 cannot run here: {why}. Use sdpa.")
    if option == "auto":
        return "flash_attention_2" if flash_ok else "sdpa"
    return option


def quantization_problem(quantization: str, checkpoint_method: str, support: HfSupport,
                         on_gpu: bool) -> Optional[str]:
    """Why ``quantization`` cannot load this checkpoint here, or None when it can."""
    if checkpoint_method == "gptq" and quantization != "gptq":
        return "This is a GPTQ checkpoint: load it with quantization gptq."
    if checkpoint_method and checkpoint_method != "gptq":
        return (f"This checkpoint is already quantised ({checkpoint_method}); FitChat loads unquantised "
                "safetensors (nf4/int8/bf16/fp16) or GPTQ checkpoints.")
    if quantization == "gptq":
        if checkpoint_method != "gptq":
            return "quantization gptq needs a GPTQ checkpoint (config.json quantization_config quant_method gptq)."
        return None if support.gptq else GPTQ_HINT
    if quantization in ("nf4", "int8"):
        name = "NF4 (4-bit)" if quantization == "nf4" else "8-bit"
        if support.bnb_version is None:
            return f"{name} needs bitsandbytes, which is not installed or does not import: {BNB_HINT}."
        if on_gpu and not support.bnb_cuda:
            return (f"{name} on the GPU needs bitsandbytes with CUDA, but the installed bitsandbytes did not "
                    f"find its CUDA library. Reinstall it ({BNB_HINT}) or load bf16/fp16.")
        if not on_gpu and support.bnb_version < BNB_CPU_MIN:
            return (f"{name} on the CPU needs bitsandbytes 0.46 or newer (installed: "
                    f"{'.'.join(map(str, support.bnb_version))}): {BNB_HINT}, or load bf16.")
    return None


def nf4_cpu_shape_problem(tensors: Sequence[TensorInfo], skip_modules: Sequence[str]) -> Optional[str]:
    """On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks NF4 weights at the first forward and
    fails unless every quantised layer's output size is a multiple of 32. Say so at load instead."""
    for t in tensors:
        if quantized_by_bnb(t, skip_modules) and t.shape[0] % NF4_CPU_BLOCK_N:
            return (f"bitsandbytes cannot run NF4 on this CPU for this model: its AVX512-BF16 kernel needs "
                    f"every quantised layer's output size to be a multiple of {NF4_CPU_BLOCK_N}, and {t.module} "
                    f"has {t.shape[0]}. Load int8 or bf16, or keep such layers unquantised (skip_modules).")
    return None
