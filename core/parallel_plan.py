"""How many replies a llama.cpp load generates at once (its slots), when the user leaves it open.

Every slot has a KV cache of the full context (the cache is not unified: one long reply never
crowds out another), so N slots cost N times the plan's KV cache; weights and compute buffers are
shared. The default is the most slots, up to ``DEFAULT_MAX_PARALLEL``, whose extra KV caches fit in
half of what the plan leaves free on each device (the other half stays for the rest of the machine
and the compute buffers' growth with more outputs a step). At least one slot, always. A model
planned on the CPU only gets one slot unless asked: batching there shares the same cores.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from core.hardware import Hardware
from core.plan import Plan

DEFAULT_MAX_PARALLEL = 4  # the gain flattens beyond (llama-batched-bench: 2.7x at 4, 3.6x at 8 on a 12B)
CPU_ONLY_REASON = ("one reply at a time on the CPU: replies batched there share the same cores, about 1.4x "
                   "in total on 2 cores while each reply slows to a third; ask for more with Parallel replies")


@dataclass(frozen=True)
class ParallelChoice:
    n_parallel: int
    reason: str


def slots_memory(plan: Plan, n_parallel: int) -> tuple[int, int]:
    """(GPU bytes, RAM bytes) of a load of ``plan`` with ``n_parallel`` slots: the plan's totals plus
    the KV caches of the extra slots."""
    extra = max(0, n_parallel - 1)
    return plan.gpu.total + extra * plan.gpu.kv_cache, plan.cpu.total + extra * plan.cpu.kv_cache


def choose_parallel(plan: Plan, hw: Hardware, ram_margin: int, vram_margin: int,
                    max_parallel: int = DEFAULT_MAX_PARALLEL) -> ParallelChoice:
    if not plan.gpu.total:
        return ParallelChoice(1, CPU_ONLY_REASON)
    gpu_free = sum(g.free_bytes for g in hw.gpus) - vram_margin - plan.gpu.total if plan.gpu.total else 0
    ram_free = hw.ram_available_bytes - ram_margin - plan.cpu.total
    n = 1
    while n < max_parallel:
        extra = n  # the KV caches of slots 2..n+1
        if plan.gpu.kv_cache and extra * plan.gpu.kv_cache > gpu_free / 2:
            break
        if plan.cpu.kv_cache and extra * plan.cpu.kv_cache > ram_free / 2:
            break
        n += 1
    where = "GPU" if plan.gpu.kv_cache else "RAM"
    kv_gib = (plan.gpu.kv_cache or plan.cpu.kv_cache) / (1 << 30)
    if n == max_parallel:
        reason = f"{n} replies at once (the default most; each adds a {kv_gib:.2f} GiB KV cache in {where})"
    else:
        reason = (f"{n} {'reply' if n == 1 else 'replies'} at once: another would add a {kv_gib:.2f} GiB KV cache "
                  f"and leave less than half of the free {where} memory")
    return ParallelChoice(n, reason)


def with_slots(plan: Plan, hw: Hardware, asked: Optional[int], ram_margin: int, vram_margin: int) -> Plan:
    """``plan`` for ``asked`` slots (None: ``choose_parallel``'s default): the KV caches of every slot in
    its memory, ``extra["n_parallel"]`` and ``extra["parallel_reason"]``. ValueError when the slots
    asked for do not fit."""
    if asked is None:
        choice = choose_parallel(plan, hw, ram_margin, vram_margin)
    else:
        choice = ParallelChoice(asked, "as asked")
    gpu, ram = slots_memory(plan, choice.n_parallel)
    if asked is not None and asked > 1:
        gpu_budget = sum(g.free_bytes for g in hw.gpus) - vram_margin
        ram_budget = hw.ram_available_bytes - ram_margin
        if plan.gpu.total and gpu > gpu_budget:
            raise ValueError(f"{asked} parallel replies need {gpu / (1 << 30):.1f} GiB on the GPU (a KV cache each); "
                             f"{max(gpu_budget, 0) / (1 << 30):.1f} GiB are free. Ask for fewer parallel replies "
                             "or a smaller context")
        if ram > ram_budget:
            raise ValueError(f"{asked} parallel replies need {ram / (1 << 30):.1f} GiB of RAM (a KV cache each); "
                             f"{max(ram_budget, 0) / (1 << 30):.1f} GiB are free. Ask for fewer parallel replies "
                             "or a smaller context")
    n = choice.n_parallel
    return replace(plan, gpu=replace(plan.gpu, kv_cache=plan.gpu.kv_cache * n),
                   cpu=replace(plan.cpu, kv_cache=plan.cpu.kv_cache * n),
                   extra={**plan.extra, "n_parallel": n, "parallel_reason": choice.reason})
