"""llama.cpp's model and context parameters from a ``LoadOptions``: the one place where load options
become ``llama_model_params`` / ``llama_context_params``.

Other features add their parameters here as small functions called from ``model_params`` or
``context_params`` (tensor buffer-type overrides for expert offload, ``offload_kqv``, split mode and
tensor split for several GPUs). ctypes arrays that llama.cpp reads during the load are kept in
``LlamaParams.keep`` until the load is over.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backends.base import ModelLoadError
from backends.expert_offload import set_expert_offload
from core.multi_gpu import llama_split_args
from core.options import LoadOptions

KV_GGML_TYPE = {"f16": 1, "q8_0": 8, "q4_0": 2}


@dataclass
class LlamaParams:
    model: Any                  # llama_cpp.llama_model_params
    context: Any                # llama_cpp.llama_context_params
    n_gpu_layers: int
    n_threads: int
    n_parallel: int
    n_ctx_seq: int              # tokens each reply (sequence) may hold
    keep: list = field(default_factory=list)  # ctypes objects llama.cpp points to


def offload_kqv(opts) -> bool:
    """llama.cpp's ``offload_kqv``: off keeps the whole KV cache (and attention) in RAM."""
    return getattr(opts, "kv_placement", "auto") != "ram"


def gpu_split(params, opts, keep: list) -> None:
    """``split_mode``, ``tensor_split`` and ``main_gpu`` of a plan over several GPUs
    (``core.multi_gpu.llama_split_args``); "auto" keeps llama.cpp's defaults (a layer split)."""
    import ctypes

    import llama_cpp

    try:
        mode, weights, main_gpu = llama_split_args(getattr(opts, "split_mode", "auto"),
                                                   getattr(opts, "tensor_split", None), getattr(opts, "main_gpu", None),
                                                   llama_cpp.llama_max_devices())
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    params.split_mode = mode
    params.main_gpu = main_gpu
    if weights is not None:
        array = (ctypes.c_float * len(weights))(*weights)
        keep.append(array)  # llama.cpp copies it during the load; until then it must stay alive
        params.tensor_split = array


def model_params(opts: LoadOptions, n_gpu_layers: int, keep: list):
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers  # INT32_MAX: every layer
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
    gpu_split(params, opts, keep)
    set_expert_offload(params, getattr(opts, "n_cpu_moe", None), keep)
    return params


def context_params(opts: LoadOptions, n_ctx_seq: int, n_parallel: int, n_threads: int, keep: list):
    """Every reply gets ``n_ctx_seq`` cells of its own: the context holds ``n_parallel`` of them,
    and the KV cache is not unified, so one long reply never crowds out another."""
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx_seq * n_parallel
    params.n_seq_max = n_parallel
    params.kv_unified = False
    params.n_batch = opts.n_batch
    params.n_ubatch = opts.n_batch
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if opts.flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    params.type_k = params.type_v = KV_GGML_TYPE[opts.kv_cache_type]
    params.offload_kqv = offload_kqv(opts)
    params.no_perf = True
    return params


def llama_params(opts: LoadOptions, n_ctx_seq: int, n_gpu_layers: int, n_threads: int,
                 n_parallel: int) -> LlamaParams:
    keep: list = []
    return LlamaParams(model=model_params(opts, n_gpu_layers, keep),
                       context=context_params(opts, n_ctx_seq, n_parallel, n_threads, keep),
                       n_gpu_layers=n_gpu_layers, n_threads=n_threads, n_parallel=n_parallel,
                       n_ctx_seq=n_ctx_seq, keep=keep)
