"""Plan a preset on a machine: the preset's fixed choices are kept, ``auto`` ones optimised."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from core.hardware import Hardware
from core.hf_model_shape import TensorInfo, dims_from_config, tensors_from_dims
from core.hub_fit import plan_transformers, transformers_best_ctx
from core.model_shape import ModelShape
from core.multi_gpu_plan import split_choice
from core.plan import Plan
from core.planner import Calibration, Goal, evaluate_as_asked, optimise
from core.presets import Preset, RankedPreset, check_requirements, match_local, shape_from_hint

# backend -> planner(preset, shape, hardware, calibration, goal); transformers registers its own.
PLANNERS: dict[str, Callable[[Preset, ModelShape, Hardware, Calibration, Goal], Plan]] = {}


def plan_llama_cpp(preset: Preset, shape: ModelShape, hw: Hardware, cal: Calibration = Calibration(),
                   goal: Goal = "fastest") -> Plan:
    opts = preset.load_options()
    fixed_kv = "kv_type" in preset.load and preset.load["kv_type"] is not None
    if opts.n_gpu_layers is not None:
        ctx = opts.n_ctx or min(4096, shape.n_ctx_train or 4096)
        return evaluate_as_asked(shape, hw, opts.n_gpu_layers, ctx, opts.kv_type, opts.flash_attn, opts.n_batch, cal,
                                 kv_placement="ram" if opts.kv_placement == "ram" else "gpu",
                                 gpu_split=split_choice(opts))
    return optimise(shape, hw, goal=goal, n_ctx=opts.n_ctx, flash_attn=opts.flash_attn, n_ubatch=opts.n_batch,
                    cal=cal, kv_types=(opts.kv_type,) if fixed_kv else None, kv_placements=opts.kv_placements,
                    gpu_split=split_choice(opts))


def plan_transformers_preset(preset: Preset, shape: ModelShape, hw: Hardware, cal: Calibration = Calibration(),
                             goal: Goal = "fastest") -> Plan:
    """transformers: the memory estimator (core.hf_memory) over a Llama-layout tensor table built
    from the preset's shape (the real table once the folder is on disk, via the Models tab)."""
    if preset.shape is None:
        raise ValueError("a transformers preset needs a shape to be planned")
    hint = preset.shape
    dims = dims_from_config({
        "model_type": hint.architecture, "hidden_size": hint.n_embd, "num_hidden_layers": hint.n_layer,
        "num_attention_heads": hint.n_head, "num_key_value_heads": hint.n_head_kv, "intermediate_size": hint.n_ff,
        "vocab_size": hint.n_vocab, "max_position_embeddings": hint.n_ctx_train,
        "tie_word_embeddings": hint.tied_embeddings})
    opts = preset.load_options()
    tensors = gptq_tensors(dims) if opts.quantization == "gptq" else tensors_from_dims(dims)
    plan = plan_transformers(dims, tensors, hw, opts.quantization, opts.n_ctx, cal)
    if goal == "context" and plan.fit != "no_fit":
        longest = transformers_best_ctx(dims, tensors, hw, opts.quantization, plan, cal)
        plan = plan_transformers(dims, tensors, hw, opts.quantization, longest, cal)
    return replace(plan, goal=goal)


def gptq_tensors(dims, bits: int = 4, group_size: int = 128) -> tuple[TensorInfo, ...]:
    """The tensor table of a 4-bit GPTQ checkpoint of this shape: each linear weight becomes packed
    int32 ``qweight``/``qzeros``, fp16 ``scales`` and an int32 ``g_idx`` (the AutoGPTQ layout)."""
    out = []
    for t in tensors_from_dims(dims, "F16"):
        if len(t.shape) == 2 and ".layers." in t.name and t.name.endswith("_proj.weight"):
            rows, cols = t.shape  # (out_features, in_features)
            base = t.name.removesuffix(".weight")
            groups = -(-cols // group_size)
            out += [TensorInfo(f"{base}.qweight", (cols * bits // 32, rows), "I32"),
                    TensorInfo(f"{base}.qzeros", (groups, rows * bits // 32), "I32"),
                    TensorInfo(f"{base}.scales", (groups, rows), "F16"),
                    TensorInfo(f"{base}.g_idx", (cols,), "I32")]
        else:
            out.append(t)
    return tuple(out)


PLANNERS["llama_cpp"] = plan_llama_cpp
PLANNERS["transformers"] = plan_transformers_preset


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
