"""Choose how a llama.cpp model is spread over several GPUs: the split mode, the ``tensor_split``
(as whole layers per GPU, so the load places exactly what was planned) and the main GPU, from each
GPU's free memory and speed. ``core.planner`` hands machines with more than one GPU to this module.

Candidates for a given number of offloaded layers, each made to fit (a layer moves from a GPU that
is over its budget to the one with the most room), then the fastest kept:
* by free memory: layers in proportion to each GPU's usable memory (llama.cpp's own default);
* fastest first: the GPUs with the most bandwidth take as many layers as fit, the others the rest
  (decode runs the GPUs one after the other, so bytes on a faster GPU cost less);
* one GPU alone (split_mode none): no second CUDA context, no hand-over between GPUs;
* row split: every matrix cut across the GPUs, which then work at once but sync at every matrix
  multiply over PCIe; only chosen when predicted clearly faster (its sync cost is not calibrated).
Plans within 2 % of the fastest count as equally fast; among them the one leaving the most room on
its fullest GPU wins (room for a longer context and for other programs).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

from core.hardware import Hardware
from core.model_shape import ModelShape
from core.multi_gpu import Split, describe_split, evaluate_split
from core.plan import Plan
from core.planner import GIB, Calibration, kv_bytes

@dataclass(frozen=True)
class SplitChoice:
    """What the user fixed of the split (load options ``split_mode``, ``tensor_split``,
    ``main_gpu``); None or "auto" = the planner chooses."""
    mode: str = "auto"                            # "auto" | "layer" | "row" | "none"
    weights: Optional[tuple[float, ...]] = None
    main_gpu: Optional[int] = None


def split_choice(options) -> SplitChoice:
    """What a ``LoadOptions`` fixes of the split."""
    return SplitChoice(options.split_mode, options.tensor_split, options.main_gpu)


def split_updates(plan: Plan) -> dict:
    """The ``LoadOptions`` fields that make a load place the model exactly as ``plan`` does
    (nothing for a plan on one GPU or none)."""
    if not plan.devices:
        return {}
    return {"split_mode": plan.split_mode, "tensor_split": plan.tensor_split or None, "main_gpu": plan.main_gpu}


TIE = 0.02          # plans this close in predicted speed count as equally fast
ROW_MARGIN = 1.25   # row split must be predicted this much faster to be chosen (its sync cost is a guess)


def _headroom(plan: Plan) -> float:
    used = [d for d in plan.devices if d.n_layers]
    return min((1 - d.memory.total / d.usable_bytes for d in used if d.usable_bytes > 0), default=0.0)


def _fits(plan: Plan) -> bool:
    return plan.fit != "no_fit"


def _proportional(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` whole layers in proportion to ``weights`` (largest remainder)."""
    s = sum(weights)
    if s <= 0:
        return [total] + [0] * (len(weights) - 1)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _fastest_first(total: int, shape: ModelShape, hw: Hardware, usable: Sequence[int]) -> list[int]:
    per_layer = max(1, (sum(shape.block_bytes) + shape.output_bytes) // (shape.n_layer + 1))
    counts, left = [0] * len(hw.gpus), total
    for g in sorted(range(len(hw.gpus)), key=lambda g: -(hw.gpus[g].bandwidth_bytes_per_s or 0)):
        take = min(left, max(0, int(usable[g] * 0.92 // per_layer)))
        counts[g], left = take, left - take
    counts[max(range(len(counts)), key=lambda g: usable[g])] += left
    return counts


def _repair(shape: ModelShape, hw: Hardware, ngl: int, counts: list[int], mode: str, ev) -> Optional[Plan]:
    """Move layers off GPUs over their budget onto the GPU with the most room until all fit."""
    per_layer = max(1, max(shape.block_bytes, default=1))
    seen: set[tuple[int, ...]] = set()
    for _ in range(ngl + 1):
        if tuple(counts) in seen:
            return None  # going round in circles: no split of this many layers fits
        seen.add(tuple(counts))
        plan = ev(Split(mode, tuple(float(c) for c in counts)))
        if _fits(plan):
            return plan
        spare = {d.index: d.usable_bytes - d.memory.total for d in plan.devices}
        if sum(spare.values()) < 0 and all(counts[g] > 0 for g in spare):
            return None  # more than all the GPUs hold together
        over = [g for g, s in spare.items() if s < 0 and counts[g] > 0]
        if not over or any(s < 0 and counts[g] == 0 for g, s in spare.items()):
            return None  # a GPU with no layer is still full (context, compute): no split helps
        src = min(over, key=lambda g: spare[g])
        dst = max((g for g in spare if g != src), key=lambda g: spare[g], default=None)
        if dst is None or spare[dst] <= 0:
            return None
        # as many layers as the overflow needs, as far as the other GPU has room (at least one)
        step = max(1, min(-(-(-spare[src]) // per_layer), counts[src], spare[dst] // per_layer))
        counts[src] -= step
        counts[dst] += step
    return None


def _candidates(shape: ModelShape, hw: Hardware, ngl: int, n_ctx: int, kv_type: str, flash_attn: bool,
                n_ubatch: int, cal: Calibration, modes: Iterable[str], main_gpu: Optional[int],
                n_cpu_moe: int = 0) -> list[tuple[str, Plan]]:
    def ev(split: Split) -> Plan:
        return evaluate_split(shape, hw, ngl, n_ctx, split, kv_type, flash_attn, n_ubatch, cal, n_cpu_moe=n_cpu_moe)

    usable = [max(g.free_bytes - cal.vram_margin_bytes - cal.gpu_overhead_bytes, 0) for g in hw.gpus]
    found: list[tuple[str, Plan]] = []
    for mode in modes:
        if mode == "none":
            for g in ([main_gpu] if main_gpu is not None else range(len(hw.gpus))):
                plan = ev(Split("none", (1.0,) * len(hw.gpus), g))
                if _fits(plan):
                    found.append((f"GPU{g} alone", plan))
            continue
        if mode == "row" and ngl < shape.n_layer + 1 and main_gpu is None:
            continue  # a row split with layers left on the CPU syncs both the GPUs and the CPU
        starts = {"by free memory": _proportional(ngl, usable)}
        if mode == "layer":
            starts["fastest first"] = _fastest_first(ngl, shape, hw, usable)
        for label, counts in starts.items():
            plan = _repair(shape, hw, ngl, list(counts), mode, ev)
            if plan is not None:
                if main_gpu:
                    plan = ev(Split(mode, plan.tensor_split, main_gpu))
                found.append((f"{mode} split, {label}", plan))
    return found


def _choose(found: list[tuple[str, Plan]], auto: bool) -> Optional[tuple[str, Plan, list[tuple[str, Plan]]]]:
    """The fastest candidate. Chosen automatically, a row split must beat a layer split that also
    fits: its memory and sync costs are less certain."""
    layer_like = [f for f in found if f[1].split_mode != "row"]
    if not layer_like and (auto or not found):
        return None
    layer_like = layer_like or found
    top = max(p.tokens_per_s for _, p in layer_like)
    rows = [f for f in found if f[1].split_mode == "row" and f[1].tokens_per_s >= ROW_MARGIN * top]
    pool = rows or [f for f in layer_like if f[1].tokens_per_s >= (1 - TIE) * top]
    label, plan = max(pool, key=lambda f: (f[1].tokens_per_s if rows else 0, _headroom(f[1])))
    return label, plan, found


def fastest_split(shape: ModelShape, hw: Hardware, n_ctx: int, kv_type: str, flash_attn: bool = True,
                  n_ubatch: int = 512, cal: Calibration = Calibration(), choice: SplitChoice = SplitChoice(),
                  n_gpu_layers: Optional[int] = None, n_cpu_moe: Optional[int] = None) -> Plan:
    """The fastest plan over split choices (and, unless given, over the number of GPU layers) at
    one context and KV type; ``choice`` fixes what the user chose. An MoE model also gets expert
    offload (every layer on the GPUs, the experts of the first N layers in RAM), kept only when
    predicted faster than the best layer offload; ``n_cpu_moe`` given: exactly that. The plan is
    ``no_fit`` (with reasons) when nothing fits."""
    if n_cpu_moe is None and shape.is_moe and n_gpu_layers is None:
        layered = fastest_split(shape, hw, n_ctx, kv_type, flash_attn, n_ubatch, cal, choice, None, 0)
        if layered.fit == "full_gpu":
            return layered
        expert = _expert_offload(shape, hw, n_ctx, kv_type, flash_attn, n_ubatch, cal, choice)
        if expert is None or (layered.fit != "no_fit" and layered.tokens_per_s >= expert.tokens_per_s):
            note = (f"layer offload ({layered.tokens_per_s:.1f} tokens/s) is faster here than the best expert offload "
                    f"({expert.tokens_per_s:.1f} tokens/s, experts of {expert.n_cpu_moe} layers in RAM)"
                    if expert is not None and layered.fit != "no_fit" else "")
            return replace(layered, reasons=layered.reasons + ((note,) if note else ()))
        note = ("" if layered.fit == "no_fit" else f"expert offload ({expert.tokens_per_s:.1f} tokens/s) is faster "
                f"than the best layer offload ({layered.tokens_per_s:.1f} tokens/s, {layered.n_gpu_layers} of "
                f"{shape.n_layer + 1} layers on the GPUs)")
        return replace(expert, reasons=expert.reasons + ((note,) if note else ()))
    moe = n_cpu_moe or 0
    mode, weights, main_gpu = choice.mode, choice.weights, choice.main_gpu
    check_choice(choice, len(hw.gpus))
    if weights is not None:
        weights = tuple(weights) + (0.0,) * (len(hw.gpus) - len(weights))  # llama.cpp reads zeros for the rest
    modes = ("layer", "none", "row") if mode == "auto" else (mode,)
    n_all = shape.n_layer + 1

    def attempt(ngl: int) -> Optional[Plan]:
        if weights is not None:
            split = Split("none" if mode == "none" else (mode if mode != "auto" else "layer"), tuple(weights),
                          main_gpu or 0)
            plan = evaluate_split(shape, hw, ngl, n_ctx, split, kv_type, flash_attn, n_ubatch, cal, n_cpu_moe=moe)
            return _explain(plan, [("as asked", plan)], "as asked", hw) if _fits(plan) else None
        chosen = _choose(_candidates(shape, hw, ngl, n_ctx, kv_type, flash_attn, n_ubatch, cal, modes, main_gpu,
                                     moe), auto=mode == "auto")
        return _explain(chosen[1], chosen[2], chosen[0], hw) if chosen is not None else None

    def failure(ngl: int) -> Plan:
        """Why the most favourable configuration does not fit (its reasons name each GPU)."""
        split = (Split("none" if mode == "none" else (mode if mode != "auto" else "layer"), tuple(weights), main_gpu or 0)
                 if weights is not None else
                 Split("layer" if mode in ("auto", "layer") else mode,
                       tuple(_proportional(ngl, [g.free_bytes for g in hw.gpus])), main_gpu or 0))
        return evaluate_split(shape, hw, ngl, n_ctx, split, kv_type, flash_attn, n_ubatch, cal, n_cpu_moe=moe)

    if n_gpu_layers is not None:
        ngl = n_gpu_layers if n_gpu_layers >= 0 else n_all
        found = attempt(ngl) if ngl > 0 else None
        if found is not None:
            return found
        if ngl > 0:
            return failure(ngl)
    else:
        # More GPU layers are faster and need more memory: binary-search the most that fit, over the
        # counts that all the GPUs together could hold at all.
        room = sum(max(g.free_bytes - cal.vram_margin_bytes - cal.gpu_overhead_bytes, 0) for g in hw.gpus)
        options = [n for n in range(n_all, 0, -1) if _least_bytes(shape, n, n_ctx, kv_type) <= room]
        tried: dict[int, Optional[Plan]] = {}

        def ok(i: int) -> Optional[Plan]:
            if i not in tried:
                tried[i] = attempt(options[i])
            return tried[i]

        lo, hi = 0, len(options)
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid) is not None:
                hi = mid
            else:
                lo = mid + 1
        if hi < len(options):
            return ok(hi)
    cpu = evaluate_split(shape, hw, 0, n_ctx, Split("layer", (1.0,) * len(hw.gpus)), kv_type, flash_attn, n_ubatch, cal)
    if _fits(cpu) and n_gpu_layers in (None, 0):
        return cpu
    return failure(n_all) if n_gpu_layers is None else cpu


def _expert_offload(shape: ModelShape, hw: Hardware, n_ctx: int, kv_type: str, flash_attn: bool, n_ubatch: int,
                    cal: Calibration, choice: SplitChoice) -> Optional[Plan]:
    """Every layer on the GPUs with the experts of the fewest first layers in RAM that lets a split
    fit (more experts in RAM need less VRAM: a binary search), or None."""
    def at(n: int) -> Plan:
        return fastest_split(shape, hw, n_ctx, kv_type, flash_attn, n_ubatch, cal, choice, -1, n)

    lo, hi = 1, shape.n_layer
    if at(hi).fit == "no_fit":
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid).fit != "no_fit":
            hi = mid
        else:
            lo = mid + 1
    return at(hi)


def _least_bytes(shape: ModelShape, ngl: int, n_ctx: int, kv_type: str) -> int:
    blocks = range(shape.n_layer - max(ngl - 1, 0), shape.n_layer)
    return sum(shape.block_bytes[i] for i in blocks) + shape.output_bytes + kv_bytes(shape, blocks, n_ctx, kv_type)


def check_choice(choice: SplitChoice, n_gpus: int) -> None:
    """Raise ValueError (a message for the user) when the choice does not match this machine."""
    if choice.weights is not None and len(choice.weights) > n_gpus:
        raise ValueError(f"tensor_split has {len(choice.weights)} entries but this machine has {n_gpus} GPUs")
    if choice.main_gpu is not None and choice.main_gpu >= n_gpus:
        raise ValueError(f"main_gpu {choice.main_gpu} does not exist: this machine has GPUs 0..{n_gpus - 1}")


def _explain(plan: Plan, found: list[tuple[str, Plan]], label: str, hw: Hardware) -> Plan:
    reasons = [describe_split(plan, hw) + ("" if plan.split_mode == "none" else f" ({label.split(', ')[-1]})")]
    for d in plan.devices:
        reasons.append(f"GPU{d.index} {d.name}: {d.n_layers} layers, {d.memory.total / GIB:.1f} of "
                       f"{d.usable_bytes / GIB:.1f} GiB usable" + (" (output head)" if d.output else "")
                       + (" (main)" if d.main and plan.split_mode == "row" else ""))
    others = sorted({(other, p.tokens_per_s) for other, p in found if other != label}, key=lambda o: -o[1])
    if others:
        rule = "within 2 % the one leaving the most free memory wins"
        if any(p.split_mode == "row" for _, p in found):
            rule += "; a row split must be 25 % faster"
        reasons.append(f"chosen at {plan.tokens_per_s:.1f} tokens/s over "
                       + "; ".join(f"{o} {t:.1f}" for o, t in others[:4]) + f" ({rule})")
    if plan.split_mode == "layer" and len([d for d in plan.devices if d.n_layers]) > 1:
        reasons.append("at batch 1 the GPUs of a layer split work one after the other: the split buys room, "
                       "not speed")
    return replace(plan, reasons=plan.reasons + tuple(reasons))
