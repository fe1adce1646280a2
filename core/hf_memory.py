"""Memory of a transformers model for a quantisation and a GPU budget (NF4, int8, GPTQ, bf16, fp16):
bytes on the GPU and in CPU RAM, which modules go where, and the ``max_memory`` for a budget.

Pure functions over ``core.hf_model_shape`` data. The rules, checked against transformers 5.23 +
bitsandbytes 0.50 (tests/test_hf_memory.py compares with a real NF4 load):
* NF4 packs two weights a byte. Per 64-weight block it keeps an fp32 absmax; with double
  quantisation a uint8 absmax instead, plus an fp32 absmax per 256 blocks. Per tensor: the NF4 code
  (16 fp32) and, with double quantisation, the 256-entry fp32 code and an fp32 offset. On a CPU
  with AVX512-BF16 the first forward repacks the weights and keeps a bf16 absmax per block.
* int8 keeps one byte a weight and an fp32 scale per output row.
* GPTQ checkpoints load as stored (packed int32 weights and zeros, fp16 scales).
* Float tensors bitsandbytes leaves alone (embeddings, norms, the head, skipped modules) take the
  compute dtype.
* Modules placed on the CPU beside a GPU are NOT quantised (``llm_int8_enable_fp32_cpu_offload``):
  they stay at the offload dtype (fp32 when the checkpoint is fp32 and no dtype is forced: 8x their
  NF4 size), and every forward streams them to the GPU, which needs room for the largest one.
* ``get_memory_footprint`` counts parameters and buffers only: packed weights, not the constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from core.hf_model_shape import (FLOAT_DTYPES, ModelDims, TensorInfo, block_index,
                                 default_skip_modules, group_name, is_embedding, quantized_by_bnb)
from core.plan import MemoryBreakdown

MIB = 1 << 20
GIB = 1 << 30
NF4_BLOCK = 64
NESTED_BLOCK = 256
COMPUTE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANTIZATIONS = ("nf4", "int8", "gptq", "bf16", "fp16")


@dataclass(frozen=True)
class HfMemorySettings:
    """How the model is loaded, as far as memory is concerned."""
    quantization: str = "nf4"         # nf4 | int8 | gptq | bf16 | fp16
    compute_dtype: str = "bf16"       # bf16 | fp16 | fp32: unquantised tensors and the KV cache
    double_quant: bool = True
    skip_modules: tuple[str, ...] = ()  # kept unquantised, besides the head
    offload_dtype: str = ""           # dtype of modules left on the CPU beside a GPU; "" = compute dtype
    n_ctx: int = 4096
    n_batch: int = 512
    static_cache: bool = False        # the compiled path allocates the whole KV cache at load
    nf4_cpu_layout: bool = False      # CPU with AVX512-BF16: after the first forward bitsandbytes
                                      # keeps one bf16 absmax per block (no double quantisation)

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantisation {self.quantization!r}")
        if self.compute_dtype not in COMPUTE_BYTES or (self.offload_dtype or "bf16") not in COMPUTE_BYTES:
            raise ValueError("dtypes are bf16, fp16 or fp32")

    @property
    def float_bytes(self) -> int:
        if self.quantization in ("bf16", "fp16"):
            return 2
        return COMPUTE_BYTES[self.compute_dtype]

    @property
    def offload_bytes(self) -> int:
        return COMPUTE_BYTES[self.offload_dtype] if self.offload_dtype else self.float_bytes


@dataclass(frozen=True)
class RuntimeOverhead:
    """Memory that is not the model's: defaults measured on our machines; the planner may calibrate."""
    # Fitted to NVML on an H100 (bench/results/gpu/gpu_transformers.json, 7B shape, NF4 and bf16):
    # torch's CUDA context, cuBLAS workspace and caching-allocator slack; the compiled path adds
    # CUDA-graph memory pools.
    cuda_context_bytes: int = 830 * MIB
    host_process_bytes: int = 700 * MIB   # the worker's Python + torch + transformers
    compiled_extra_bytes: int = 200 * MIB


@dataclass(frozen=True)
class GroupMemory:
    """One placement unit (the embeddings, a decoder block, the final norm, the head)."""
    name: str
    block: Optional[int]
    loaded_bytes: int      # when it sits on its compute device (quantised where bitsandbytes quantises)
    footprint_bytes: int   # the part ``get_memory_footprint`` counts
    offload_bytes: int     # kept in CPU RAM beside a GPU: unquantised, at the offload dtype
    streamed_bytes: int    # on the GPU while an offloaded group runs (compute dtype)
    quant_constant_bytes: int = 0


@dataclass(frozen=True)
class HfMemoryEstimate:
    gpu: MemoryBreakdown
    cpu: MemoryBreakdown
    device_map: dict = field(default_factory=dict)  # group name -> 0 (GPU 0) or "cpu"
    n_blocks: int = 0
    gpu_blocks: int = 0
    footprint_bytes: int = 0        # get_memory_footprint, all devices
    quant_constant_bytes: int = 0
    fits: bool = True               # the GPU share is within the budget

    @property
    def cpu_only(self) -> bool:
        return bool(self.device_map) and set(self.device_map.values()) == {"cpu"}

    @property
    def fully_on_gpu(self) -> bool:
        return bool(self.device_map) and "cpu" not in self.device_map.values()


def nf4_constant_bytes(numel: int, double_quant: bool = True, cpu_layout: bool = False) -> int:
    blocks = math.ceil(numel / NF4_BLOCK)
    if cpu_layout:
        return 2 * blocks + 4 * 16 + 4
    if double_quant:
        return blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 * NESTED_BLOCK + 4 * 16 + 4
    return 4 * blocks + 4 * 16


def _tensor_bytes(t: TensorInfo, s: HfMemorySettings, skip: Sequence[str]) -> tuple[int, int, int]:
    """(loaded bytes, footprint bytes, quantisation constant bytes) of one tensor."""
    if t.dtype not in FLOAT_DTYPES:
        return t.stored_bytes, t.stored_bytes, 0  # GPTQ's packed ints, index tensors
    if s.quantization == "nf4" and quantized_by_bnb(t, skip):
        packed = math.ceil(t.numel / 2)
        constants = nf4_constant_bytes(t.numel, s.double_quant, s.nf4_cpu_layout)
        return packed + constants, packed, constants
    if s.quantization == "int8" and quantized_by_bnb(t, skip):
        scales = 4 * t.shape[0]
        return t.numel + scales, t.numel, scales
    size = t.numel * s.float_bytes
    return size, size, 0


def group_memory(tensors: Sequence[TensorInfo], settings: HfMemorySettings) -> tuple[GroupMemory, ...]:
    """Bytes of each placement group, in placement order: embeddings, blocks by index, the rest."""
    skip = default_skip_modules(tensors) + tuple(settings.skip_modules)
    sums: dict[str, list[int]] = {}
    blocks: dict[str, Optional[int]] = {}
    for t in tensors:
        name = group_name(t.name)
        loaded, footprint, constants = _tensor_bytes(t, settings, skip)
        unquantised = t.stored_bytes if t.dtype not in FLOAT_DTYPES else t.numel * settings.offload_bytes
        streamed = t.stored_bytes if t.dtype not in FLOAT_DTYPES else t.numel * settings.float_bytes
        acc = sums.setdefault(name, [0, 0, 0, 0, 0])
        for i, v in enumerate((loaded, footprint, unquantised, streamed, constants)):
            acc[i] += v
        blocks[name] = block_index(t.name)

    def order(name: str) -> tuple[int, int]:
        if blocks[name] is not None:
            return 1, blocks[name]
        return (0, 0) if is_embedding(name + ".") else (2, 0)

    return tuple(GroupMemory(n, blocks[n], *sums[n]) for n in sorted(sums, key=order))


def kv_cache_bytes(dims: ModelDims, tokens: int, element_bytes: int = 2) -> int:
    return dims.kv_elements_per_token * tokens * element_bytes


def compute_bytes(dims: ModelDims, settings: HfMemorySettings, tensors: Sequence[TensorInfo]) -> int:
    """Activations of one prompt chunk, the fp32 logits of the last position, and (bitsandbytes)
    the largest weight dequantised for a prompt matmul. An estimate; the KV cache is counted apart."""
    chunk = settings.n_batch * (6 * dims.hidden_size + 3 * dims.intermediate_size) * settings.float_bytes
    logits = 2 * dims.vocab_size * 4
    dequant = 0
    if settings.quantization in ("nf4", "int8"):
        skip = default_skip_modules(tensors) + tuple(settings.skip_modules)
        largest = max((t.numel for t in tensors if quantized_by_bnb(t, skip)), default=0)
        dequant = largest * settings.float_bytes
    return chunk + logits + dequant


def _buffer_bytes(dims: ModelDims) -> int:
    return dims.head_dim * 4  # rotary inv_freq and original_inv_freq: head_dim/2 fp32 each


def estimate_memory(dims: ModelDims, tensors: Sequence[TensorInfo], settings: HfMemorySettings,
                    gpu_budget_bytes: Optional[int] = None, overhead: RuntimeOverhead = RuntimeOverhead(),
                    kv_tokens: Optional[int] = None) -> HfMemoryEstimate:
    """Where the model goes and what it takes.

    ``gpu_budget_bytes``: None = all on the GPU (whether it fits is the caller's question); 0 = CPU
    only; otherwise the embeddings, the final norm and head, the KV cache, the compute buffers and
    the CUDA context go on the GPU, then as many decoder blocks, in order, as fit; the other blocks
    stay in CPU RAM (unquantised, see the module docstring). ``kv_tokens``: tokens in the KV cache
    (default: the whole context).
    """
    groups = group_memory(tensors, settings)
    kv = kv_cache_bytes(dims, settings.n_ctx if kv_tokens is None or settings.static_cache else kv_tokens,
                        settings.float_bytes)
    compute = compute_bytes(dims, settings, tensors)
    buffers = _buffer_bytes(dims)
    footprint = sum(g.footprint_bytes for g in groups) + buffers
    constants = sum(g.quant_constant_bytes for g in groups)
    blocks = [g for g in groups if g.block is not None]
    fixed = [g for g in groups if g.block is None]
    all_weights = sum(g.loaded_bytes for g in groups) + buffers

    if gpu_budget_bytes == 0:
        return HfMemoryEstimate(
            gpu=MemoryBreakdown(),
            cpu=MemoryBreakdown(all_weights, kv, compute, overhead.host_process_bytes),
            device_map={g.name: "cpu" for g in groups}, n_blocks=len(blocks), gpu_blocks=0,
            footprint_bytes=footprint, quant_constant_bytes=constants)

    runtime = overhead.cuda_context_bytes + (overhead.compiled_extra_bytes if settings.static_cache else 0)
    fixed_gpu = sum(g.loaded_bytes for g in fixed) + buffers + kv + compute + runtime
    n_gpu = len(blocks)
    if gpu_budget_bytes is not None:
        while n_gpu > 0 and _gpu_total(fixed_gpu, blocks, n_gpu) > gpu_budget_bytes:
            n_gpu -= 1
        if n_gpu == 0 and blocks:
            # Not one block fits: streaming every block over PCIe is slower than the CPU; run there.
            return estimate_memory(dims, tensors, settings, 0, overhead, kv_tokens)
    on_cpu = blocks[n_gpu:]
    gpu_total_weights = sum(g.loaded_bytes for g in fixed) + buffers + sum(g.loaded_bytes for g in blocks[:n_gpu])
    staging = max((g.streamed_bytes for g in on_cpu), default=0)
    offloaded = sum(g.offload_bytes for g in on_cpu)
    device_map = {g.name: 0 for g in fixed}
    device_map.update({g.name: (0 if i < n_gpu else "cpu") for i, g in enumerate(blocks)})
    device_map = {g.name: device_map[g.name] for g in groups}  # placement order
    gpu = MemoryBreakdown(gpu_total_weights, kv, compute + staging, runtime)
    footprint_offloaded = footprint - sum(g.footprint_bytes for g in on_cpu) + offloaded
    return HfMemoryEstimate(
        gpu=gpu, cpu=MemoryBreakdown(offloaded, 0, 0, overhead.host_process_bytes),
        device_map=device_map, n_blocks=len(blocks), gpu_blocks=n_gpu,
        footprint_bytes=footprint_offloaded,
        quant_constant_bytes=constants - sum(g.quant_constant_bytes for g in on_cpu),
        fits=gpu_budget_bytes is None or gpu.total <= gpu_budget_bytes)


def _gpu_total(fixed_gpu: int, blocks: Sequence[GroupMemory], n_gpu: int) -> int:
    staging = max((g.streamed_bytes for g in blocks[n_gpu:]), default=0)
    return fixed_gpu + sum(g.loaded_bytes for g in blocks[:n_gpu]) + staging


def max_memory_for_budget(gpu_budget_bytes: int, cpu_budget_bytes: int, gpu_index: int = 0) -> dict:
    """The ``max_memory`` argument of ``from_pretrained(device_map="auto")`` for a GPU budget, e.g.
    ``{0: 10737418240, "cpu": 34359738368}``. transformers lowers it by 10% for bitsandbytes and
    accelerate keeps room for the largest block, so "auto" places less on the GPU than this says;
    FitChat's engine passes the explicit ``HfMemoryEstimate.device_map`` instead."""
    if gpu_budget_bytes < 0 or cpu_budget_bytes < 0:
        raise ValueError("budgets cannot be negative")
    return {gpu_index: int(gpu_budget_bytes), "cpu": int(cpu_budget_bytes)}

