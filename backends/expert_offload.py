"""Expert offload for mixture-of-experts models: llama.cpp's ``--n-cpu-moe N`` through the model
parameters' ``tensor_buft_overrides``.

llama-cpp-python 0.3.36 declares ``llama_model_params.tensor_buft_overrides`` as a bare pointer and
has no ctypes type for ``struct llama_model_tensor_buft_override {const char *pattern;
ggml_backend_buffer_type_t buft;}``, so the NULL-terminated array is built here: one regular
expression (llama.cpp's own ``blk\\.N\\.ffn_(up|down|gate)_(ch|)exps`` per layer, joined) mapped to
the CPU buffer type from ggml. llama.cpp keeps pointing at the pattern strings, so the caller keeps
the returned objects alive for the model's lifetime.

The engine calls ``set_expert_offload(model_params, n_cpu_moe, keep)`` once, before loading.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Optional


class TensorBuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def expert_pattern(n_cpu_moe: int) -> str:
    """The tensors of the routed experts of blocks 0..n_cpu_moe-1 (weights and biases), as llama.cpp's
    ``--n-cpu-moe`` matches them (its LLM_FFN_EXPS_REGEX, plus a fused gate_up)."""
    layers = "|".join(str(i) for i in range(n_cpu_moe))
    return rf"blk\.({layers})\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def _ggml_library(name: str) -> ctypes.CDLL:
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent / "lib"
    matches = sorted(folder.glob(f"{name}.*")) + sorted(folder.glob(f"lib{name}.*"))
    if not matches:
        raise OSError(f"{name} not found in {folder}")
    return ctypes.CDLL(str(matches[0]))


def cpu_buffer_type() -> int:
    """ggml's CPU buffer type (host memory) as a pointer value."""
    base = _ggml_library("libggml-base")
    fn = base.ggml_backend_cpu_buffer_type
    fn.restype, fn.argtypes = ctypes.c_void_p, []
    value = fn()
    if not value:
        raise OSError("ggml_backend_cpu_buffer_type returned NULL")
    return value


def set_expert_offload(params: Any, n_cpu_moe: Optional[int], keep: list) -> int:
    """Put the routed experts of the first ``n_cpu_moe`` blocks in host memory. ``params`` is a
    ``llama_cpp.llama_model_params``; ctypes objects it points to are appended to ``keep``.
    Returns the number of layers asked for (0: nothing set)."""
    if not n_cpu_moe:
        return 0
    pattern = expert_pattern(n_cpu_moe).encode("ascii")
    array = (TensorBuftOverride * 2)()
    array[0].pattern = pattern
    array[0].buft = cpu_buffer_type()
    array[1].pattern = None  # the NULL terminator
    array[1].buft = None
    keep += [pattern, array]
    params.tensor_buft_overrides = ctypes.cast(array, ctypes.c_void_p)
    return n_cpu_moe
