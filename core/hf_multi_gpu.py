"""A transformers model over several GPUs: which decoder blocks go to which GPU, each GPU's bytes,
and accelerate's ``max_memory`` per GPU, from the same budgets the llama.cpp planner uses (free
VRAM less a margin, per GPU). The worker passes the explicit device map; ``max_memory`` is what an
``device_map="auto"`` load would be given for the same placement.

Rules (as ``core.hf_memory`` for one GPU): the embeddings sit on the first GPU, the final norm and
the head on the last GPU that holds blocks; each GPU holds a CUDA context, the activations of one
prompt chunk (``compute_bytes``) and the KV cache of its own blocks. Blocks go to the GPUs in order,
in proportion to the room each has (a balanced split leaves every GPU room for the cache to grow);
blocks that fit nowhere stay in CPU RAM and are streamed to the first GPU, as with one GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from core.hf_memory import (HfMemoryEstimate, HfMemorySettings, RuntimeOverhead, _buffer_bytes, compute_bytes,
                            group_memory, kv_cache_bytes)
from core.hf_model_shape import ModelDims, TensorInfo
from core.plan import MemoryBreakdown


@dataclass(frozen=True)
class HfGpuShare:
    index: int
    memory: MemoryBreakdown
    first_block: int
    n_blocks: int
    budget_bytes: int


@dataclass(frozen=True)
class HfMultiGpuEstimate:
    estimate: HfMemoryEstimate          # ``gpu`` is the sum over the GPUs; ``device_map`` names each GPU
    gpus: tuple[HfGpuShare, ...]
    max_memory: dict                    # {0: bytes, 1: bytes, ..., "cpu": bytes}


def _proportional(total: int, weights: Sequence[float]) -> list[int]:
    s = sum(weights)
    if s <= 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return counts


def spread_over_gpus(dims: ModelDims, tensors: Sequence[TensorInfo], settings: HfMemorySettings,
                     budgets: Sequence[int], overhead: RuntimeOverhead = RuntimeOverhead(),
                     cpu_budget: Optional[int] = None) -> HfMultiGpuEstimate:
    """Place the model over GPUs with these budgets (bytes each may take, in device order)."""
    if not budgets or any(b < 0 for b in budgets):
        raise ValueError("one non-negative budget per GPU is needed")
    groups = group_memory(tensors, settings)
    blocks = [g for g in groups if g.block is not None]
    first = [g for g in groups if g.block is None and groups.index(g) < (groups.index(blocks[0]) if blocks else 0)]
    last = [g for g in groups if g.block is None and g not in first]
    n_gpu = len(budgets)
    n_blocks = len(blocks)
    kv_block = kv_cache_bytes(dims, settings.n_ctx, settings.float_bytes) // max(n_blocks, 1)
    compute = compute_bytes(dims, settings, tensors)
    runtime = overhead.cuda_context_bytes
    head = sum(g.loaded_bytes for g in last)
    embed = sum(g.loaded_bytes for g in first) + _buffer_bytes(dims)
    per_block = [g.loaded_bytes + kv_block for g in blocks]
    mean_block = sum(per_block) / max(n_blocks, 1)

    def place(staging: int) -> list[int]:
        def room(i: int, head_here: bool) -> float:
            fixed = runtime + compute + (embed + staging if i == 0 else 0) + (head if head_here else 0)
            return max(budgets[i] - fixed, 0)

        # The head goes with the last GPU that gets blocks: try the last GPU first, then earlier ones.
        counts = [0] * n_gpu
        for head_gpu in range(n_gpu - 1, -1, -1):
            rooms = [room(i, i == head_gpu) if i <= head_gpu else 0 for i in range(n_gpu)]
            target = _proportional(n_blocks, rooms)
            counts = [min(t, int(r // mean_block)) if mean_block else t for t, r in zip(target, rooms)]
            for i in range(n_gpu):  # what one GPU could not take, another with room may
                while sum(counts) < n_blocks and (counts[i] + 1) * mean_block <= rooms[i]:
                    counts[i] += 1
            if counts[head_gpu] or head_gpu == 0:
                break
        return counts

    counts = place(0)
    if sum(counts) < n_blocks:  # some blocks stay in RAM: GPU 0 needs room to stream the largest in
        counts = place(max((g.streamed_bytes for g in blocks), default=0))
    on_gpu = sum(counts)
    cpu_blocks = blocks[on_gpu:]
    staging = max((g.streamed_bytes for g in cpu_blocks), default=0)
    device_map: dict = {g.name: 0 for g in first}
    shares, start = [], 0
    head_gpu = max((i for i in range(n_gpu) if counts[i]), default=0)
    for i in range(n_gpu):
        mine = blocks[start:start + counts[i]]
        for g in mine:
            device_map[g.name] = i
        weights = sum(g.loaded_bytes for g in mine) + (embed if i == 0 else 0) + (head if i == head_gpu else 0)
        used = bool(mine) or i == 0
        memory = MemoryBreakdown(weights, kv_block * len(mine), (compute + (staging if i == 0 else 0)) if used else 0,
                                 runtime if used else 0)
        shares.append(HfGpuShare(i, memory, start, len(mine), budgets[i]))
        start += counts[i]
    for g in cpu_blocks:
        device_map[g.name] = "cpu"
    for g in last:
        device_map[g.name] = head_gpu
    device_map = {g.name: device_map[g.name] for g in groups}
    offloaded = sum(g.offload_bytes for g in cpu_blocks)
    total = MemoryBreakdown(*(sum(getattr(s.memory, k) for s in shares) for k in ("weights", "kv_cache", "compute", "overhead")))
    footprint = sum(g.footprint_bytes for g in groups) + _buffer_bytes(dims) \
        - sum(g.footprint_bytes for g in cpu_blocks) + offloaded
    estimate = HfMemoryEstimate(
        gpu=total, cpu=MemoryBreakdown(offloaded, 0, 0, overhead.host_process_bytes), device_map=device_map,
        n_blocks=n_blocks, gpu_blocks=on_gpu, footprint_bytes=footprint,
        quant_constant_bytes=sum(g.quant_constant_bytes for g in groups) - sum(g.quant_constant_bytes for g in cpu_blocks),
        fits=all(s.memory.total <= s.budget_bytes for s in shares))
    max_memory = {i: int(b) for i, b in enumerate(budgets)}
    max_memory["cpu"] = int(cpu_budget if cpu_budget is not None else max(offloaded, 0))
    return HfMultiGpuEstimate(estimate, tuple(shares), max_memory)


def over_several_gpus(dims: ModelDims, tensors: Sequence[TensorInfo], settings: HfMemorySettings,
                      free_bytes: Sequence[int], margin: int, one_gpu: HfMemoryEstimate,
                      overhead: RuntimeOverhead = RuntimeOverhead()) -> Optional[HfMultiGpuEstimate]:
    """The spread over several GPUs when GPU 0 alone cannot hold the model and the spread holds
    more blocks; None otherwise (one GPU, or nothing gained)."""
    if len(free_bytes) < 2 or one_gpu.fully_on_gpu:
        return None
    multi = spread_over_gpus(dims, tensors, settings, [max(0, f - margin) for f in free_bytes], overhead)
    return multi if multi.estimate.fits and multi.estimate.gpu_blocks > one_gpu.gpu_blocks else None


def device_plans(multi: HfMultiGpuEstimate, names: Sequence[str]) -> tuple:
    """The GPUs' shares as ``core.plan.DevicePlan`` (what the Resources tab and ``plan`` show)."""
    from core.plan import DevicePlan
    last = max((s.index for s in multi.gpus if s.n_blocks), default=0)
    return tuple(DevicePlan(index=s.index, name=names[s.index] if s.index < len(names) else f"GPU{s.index}",
                            memory=s.memory, usable_bytes=s.budget_bytes, first_block=s.first_block,
                            n_blocks=s.n_blocks, output=s.index == last, main=s.index == 0)
                 for s in multi.gpus)
