"""Plan a preset on a machine: the preset's fixed choices are kept, ``auto`` ones optimised."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from core.hardware import Hardware
from core.model_shape import ModelShape
from core.plan import Plan
from core.planner import Calibration, Goal, evaluate, optimise
from core.presets import Preset, RankedPreset, check_requirements, match_local, shape_from_hint

# backend -> planner(preset, shape, hardware, calibration, goal); transformers registers its own.
PLANNERS: dict[str, Callable[[Preset, ModelShape, Hardware, Calibration, Goal], Plan]] = {}


def plan_llama_cpp(preset: Preset, shape: ModelShape, hw: Hardware, cal: Calibration = Calibration(),
                   goal: Goal = "fastest") -> Plan:
    opts = preset.load_options()
    fixed_kv = "kv_type" in preset.load and preset.load["kv_type"] is not None
    if opts.n_gpu_layers is not None:
        ctx = opts.n_ctx or min(4096, shape.n_ctx_train or 4096)
        return evaluate(shape, hw, opts.n_gpu_layers, ctx, opts.kv_type, opts.flash_attn, opts.n_batch, cal)
    return optimise(shape, hw, goal=goal, n_ctx=opts.n_ctx, flash_attn=opts.flash_attn, n_ubatch=opts.n_batch,
                    cal=cal, kv_types=(opts.kv_type,) if fixed_kv else None)


PLANNERS["llama_cpp"] = plan_llama_cpp


def plan_preset(key: str, preset: Preset, hw: Hardware, library: list[tuple[str, str]],
                read_shape: Callable[[str], ModelShape], cal: Calibration = Calibration(),
                goal: Goal = "fastest") -> RankedPreset:
    """Plan one preset. ``read_shape(path)`` reads the model's header when the file is on disk
    (an adapter passed in; errors become the entry's ``problem``)."""
    local = match_local(preset.model, library)
    shape: Optional[ModelShape] = None
    exact = False
    problem = ""
    if local is not None and preset.backend == "llama_cpp":
        try:
            shape, exact = read_shape(local), True
        except ValueError as exc:
            problem = f"the file on disk cannot be read: {exc}"
    if shape is None and preset.shape is not None:
        shape = shape_from_hint(preset.shape, preset.name, preset.quantization)
    if shape is None:
        return RankedPreset(key, preset, None, local, False, problem or "no shape given and the model is not on disk")
    planner = PLANNERS.get(preset.backend)
    if planner is None:
        return RankedPreset(key, preset, None, local, exact, f"the {preset.backend} backend is not available")
    try:
        plan = planner(preset, shape, hw, cal, goal)
    except ValueError as exc:
        return RankedPreset(key, preset, None, local, exact, str(exc))
    extra = check_requirements(preset, hw)
    if not exact:
        extra.append("planned from the preset's description; exact once the file is downloaded")
    if extra:
        plan = replace(plan, reasons=plan.reasons + tuple(extra))
    return RankedPreset(key, preset, plan, local, exact, problem)
