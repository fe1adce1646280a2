"""Loading a safetensors model with transformers: the checks first (in this order: the folder, the
architecture, the quantisation this machine can run, the placement within the budget), then
``from_pretrained`` with safetensors only, no remote code, no network, and the device map made by
``core.hf_memory``. Only imported inside the model worker (it imports torch and transformers).
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from backends.base import BufferSize, ModelLoadError
from core.hf_memory import GIB, MIB, HfMemoryEstimate, HfMemorySettings, RuntimeOverhead, estimate_memory
from core.hf_model_shape import default_skip_modules
from core.hf_multi_gpu import HfMultiGpuEstimate, over_several_gpus
from core.hf_support import (HfSupport, nf4_cpu_shape_problem, quantization_problem, resolve_attention,
                             resolve_compute_dtype)
from core.options import TransformersLoadOptions
from services.hf_repo import HfRepo, RepoError, inspect_repo

DEFAULT_CTX = 4096
GPU_MARGIN_BYTES = 512 * MIB
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class LoadPlan:
    repo: HfRepo
    options: TransformersLoadOptions
    support: HfSupport
    dtype: str
    attention: str
    n_ctx: int
    estimate: HfMemoryEstimate
    gpu_budget_bytes: Optional[int]
    max_memory: Optional[dict] = None  # per GPU when spread over several (core.hf_multi_gpu)


def probe_support(quantization: str) -> HfSupport:
    """What this process can run. Imports bitsandbytes only when the quantisation needs it."""
    cuda = torch.cuda.is_available()
    cc = torch.cuda.get_device_capability(0) if cuda else None
    bnb_version, bnb_cuda, repacks = None, False, False
    if quantization in ("nf4", "int8"):
        try:
            import bitsandbytes
            from bitsandbytes import cextension, functional

            bnb_version = tuple(int(x) for x in bitsandbytes.__version__.split(".")[:2] if x.isdigit())
            bnb_cuda = getattr(cextension, "BNB_BACKEND", "") == "CUDA"
            repacks = bool(getattr(functional, "has_avx512bf16", lambda: False)())
        except Exception as exc:  # a broken install raises anything from ImportError to RuntimeError
            print(f"bitsandbytes does not import: {type(exc).__name__}: {exc}", file=sys.stderr)
    gptq = all(importlib.util.find_spec(m) is not None for m in ("optimum", "gptqmodel"))
    return HfSupport(cuda=cuda, compute_capability=tuple(cc) if cc else None, bnb_version=bnb_version,
                     bnb_cuda=bnb_cuda, gptq=gptq, flash_attn=importlib.util.find_spec("flash_attn") is not None,
                     bnb_cpu_repacks_nf4=repacks)


def supported_model_types() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _gpu_budget(opts: TransformersLoadOptions, support: HfSupport) -> tuple[Optional[int], RuntimeOverhead]:
    """(budget for estimate_memory, overhead). Auto = free VRAM now, less a margin; the CUDA context
    already exists then (we just asked the driver), so it is not counted again."""
    if not support.cuda or opts.gpu_memory_gib == 0:
        return 0, RuntimeOverhead()
    if opts.gpu_memory_gib is not None:
        return int(opts.gpu_memory_gib * GIB), RuntimeOverhead()
    free, _total = torch.cuda.mem_get_info(0)
    return max(0, free - GPU_MARGIN_BYTES), RuntimeOverhead(cuda_context_bytes=0)


def plan_load(model_path: str, opts: TransformersLoadOptions) -> LoadPlan:
    """Every check that needs no weights; ModelLoadError says what is wrong."""
    try:
        repo = inspect_repo(model_path, supported_model_types())
    except RepoError as exc:
        raise ModelLoadError(str(exc)) from None
    support = probe_support(opts.quantization)
    budget, overhead = _gpu_budget(opts, support)
    problem = quantization_problem(opts.quantization, repo.quant_method, support, on_gpu=budget != 0)
    if not problem and opts.quantization == "nf4" and budget == 0 and support.bnb_cpu_repacks_nf4:
        problem = nf4_cpu_shape_problem(repo.tensors, default_skip_modules(repo.tensors) + tuple(opts.skip_modules))
    if problem:
        raise ModelLoadError(problem)
    dtype = resolve_compute_dtype(opts.compute_dtype, opts.quantization, support)
    try:
        attention = resolve_attention(opts.attn_implementation, dtype, support)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    n_ctx_train = repo.dims.max_position_embeddings
    n_ctx = opts.n_ctx or min(DEFAULT_CTX, n_ctx_train)
    if n_ctx > n_ctx_train:
        raise ModelLoadError(f"A context of {n_ctx} tokens is more than this model was trained for ({n_ctx_train}).")
    settings = HfMemorySettings(opts.quantization, dtype, opts.double_quant, tuple(opts.skip_modules),
                                n_ctx=n_ctx, n_batch=opts.n_batch, static_cache=opts.compile,
                                nf4_cpu_layout=budget == 0 and support.bnb_cpu_repacks_nf4)
    estimate = estimate_memory(repo.dims, repo.tensors, settings, budget, overhead)
    multi = _over_several_gpus(repo, settings, opts, estimate)
    if multi is not None:
        estimate = multi.estimate
    if not estimate.fits:
        raise ModelLoadError(f"The model needs {estimate.gpu.total / GIB:.1f} GiB on the GPU even with blocks "
                             f"offloaded; the budget is {budget / GIB:.1f} GiB.")
    if opts.cpu_memory_gib is not None and estimate.cpu.weights > opts.cpu_memory_gib * GIB:
        raise ModelLoadError(f"The modules in CPU RAM need {estimate.cpu.weights / GIB:.1f} GiB; the CPU "
                             f"budget is {opts.cpu_memory_gib:.1f} GiB. Raise it or the GPU budget.")
    if opts.compile and not (estimate.fully_on_gpu or estimate.cpu_only):
        raise ModelLoadError(f"Static cache + torch.compile needs the whole model on one device, but only "
                             f"{estimate.gpu_blocks} of {estimate.n_blocks} blocks fit on the GPU. Load without "
                             "compile, or with a smaller model or quantisation.")
    return LoadPlan(repo, opts, support, dtype, attention, n_ctx, estimate, budget,
                    multi.max_memory if multi is not None else None)


def _over_several_gpus(repo: HfRepo, settings: HfMemorySettings, opts: TransformersLoadOptions,
                       one_gpu: HfMemoryEstimate) -> Optional[HfMultiGpuEstimate]:
    """With more than one CUDA device, an automatic budget and a model that GPU 0 alone cannot hold:
    the blocks spread over every GPU's free memory (less the margin), when that holds more of them.
    Free memory is read after each device's CUDA context exists, so no context is counted again."""
    if opts.gpu_memory_gib is not None or opts.compile or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return over_several_gpus(repo.dims, repo.tensors, settings, free, GPU_MARGIN_BYTES, one_gpu,
                             RuntimeOverhead(cuda_context_bytes=0))


def _quantization_config(plan: LoadPlan):
    from transformers import BitsAndBytesConfig

    opts, mixed = plan.options, not (plan.estimate.fully_on_gpu or plan.estimate.cpu_only)
    if opts.quantization == "nf4":
        skip = list(default_skip_modules(plan.repo.tensors)) + list(opts.skip_modules)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=opts.double_quant,
                                  bnb_4bit_compute_dtype=TORCH_DTYPES[plan.dtype],
                                  llm_int8_skip_modules=skip, llm_int8_enable_fp32_cpu_offload=mixed)
    if opts.quantization == "int8":
        skip = list(default_skip_modules(plan.repo.tensors)) + list(opts.skip_modules)
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip,
                                  llm_int8_enable_fp32_cpu_offload=mixed)
    return None  # bf16 / fp16; GPTQ reads its quantization_config from config.json


def _device_map(plan: LoadPlan):
    est = plan.estimate
    if est.cpu_only:
        return {"": "cpu"}
    if est.fully_on_gpu and set(est.device_map.values()) == {0}:
        return {"": 0}
    return full_device_map(plan.repo, est.device_map)


def full_device_map(repo: HfRepo, groups: dict) -> dict:
    """An explicit accelerate device map covering every module of the model (built on the meta
    device): the planned groups as planned, anything else (rotary buffers...) on the GPU."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(repo.path), trust_remote_code=False, local_files_only=True)
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    result: dict = {}

    def visit(prefix: str, module) -> None:
        if prefix in groups:
            result[prefix] = groups[prefix]
            return
        children = list(module.named_children())
        own = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        if prefix and (own or not children):
            result[prefix] = 0
            return
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", meta)
    return result


def load_model(plan: LoadPlan):
    """``from_pretrained`` for a checked plan: safetensors only, no remote code, local files only."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(use_safetensors=True, trust_remote_code=False, local_files_only=True,
                  attn_implementation=plan.attention, device_map=_device_map(plan))
    kwargs[_dtype_keyword()] = TORCH_DTYPES[plan.dtype]
    quant = _quantization_config(plan)
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        model = AutoModelForCausalLM.from_pretrained(str(plan.repo.path), **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise ModelLoadError("Out of GPU memory while loading: lower the GPU budget or pick a smaller "
                             "quantisation.") from None
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"transformers could not load {plan.repo.path.name}: {detail}") from None
    model.eval()
    if plan.support.cuda:
        torch.cuda.empty_cache()  # load-time staging buffers: give them back so NVML shows the model
    return model


def _dtype_keyword() -> str:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56


def _device_label(device: torch.device) -> str:
    return f"CUDA{device.index or 0}" if device.type == "cuda" else "CPU"


def _quant_state_tensors(param) -> list:
    state = getattr(param, "quant_state", None)
    found = [getattr(param, "SCB", None)]
    if state is not None:
        found += [state.absmax, state.code, getattr(state, "offset", None)]
        nested = getattr(state, "state2", None)
        if nested is not None:
            found += [nested.absmax, nested.code]
    return [t for t in found if isinstance(t, torch.Tensor)]


def measured_weights(model) -> dict[str, int]:
    """Bytes of parameters, buffers and quantisation constants per device, each storage once;
    modules offloaded by accelerate are counted where their weights really are (CPU RAM)."""
    seen: set[tuple[str, int]] = set()
    sizes: dict[str, int] = {}

    def add(t: torch.Tensor) -> None:
        if t.device.type == "meta":
            return
        key = (_device_label(t.device), t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            sizes[key[0]] = sizes.get(key[0], 0) + t.untyped_storage().nbytes()

    for p in model.parameters():
        add(p)
        for t in _quant_state_tensors(p):
            add(t)
    for b in model.buffers():
        add(b)
    for module in model.modules():  # accelerate keeps CPU-offloaded weights in the hooks' state dict
        weights_map = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        state = getattr(getattr(weights_map, "dataset", None), "state_dict", None)
        for t in (state or {}).values():
            if isinstance(t, torch.Tensor):
                add(t)
    return sizes


def memory_buffers(model, kv_bytes: int, kv_device: str) -> tuple[BufferSize, ...]:
    found = [BufferSize(device, "model", round(n / MIB, 2)) for device, n in sorted(measured_weights(model).items())]
    if kv_bytes:
        found.append(BufferSize(kv_device, "KV", round(kv_bytes / MIB, 2)))
    return tuple(found)
