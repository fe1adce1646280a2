"""Plan a preset on a machine through the one door: the preset's fixed choices are kept, ``auto`` ones optimised."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Collection, Optional

from core.hardware import Hardware
from core.hf_model_shape import TensorInfo, dims_from_config, tensors_from_dims
from core.load_plan import HfFacts, ModelFacts, plan_load
from core.planner import Calibration, Goal
from core.presets import Preset, RankedPreset, check_requirements, match_local, shape_from_hint

ReadFacts = Callable[[str, str], ModelFacts]
"""``read_facts(path, backend)``: the facts of a model on disk (an adapter passed in, e.g.
``services.planning.Planning.facts``); ValueError/OSError when it cannot be read."""


def facts_from_hint(preset: Preset) -> ModelFacts:
    """What the preset's description says about its model, for planning before a download."""
    if preset.shape is None:
        raise ValueError("no shape given and the model is not on disk")
    hint = preset.shape
    if preset.backend == "llama_cpp":
        return ModelFacts("llama_cpp", preset.name, shape=shape_from_hint(hint, preset.name, preset.quantization),
                          exact=False)
    dims = dims_from_config({
        "model_type": hint.architecture, "hidden_size": hint.n_embd, "num_hidden_layers": hint.n_layer,
        "num_attention_heads": hint.n_head, "num_key_value_heads": hint.n_head_kv, "intermediate_size": hint.n_ff,
        "vocab_size": hint.n_vocab, "max_position_embeddings": hint.n_ctx_train,
        "tie_word_embeddings": hint.tied_embeddings})
    gptq = preset.load_options().quantization == "gptq"
    tensors = gptq_tensors(dims) if gptq else tensors_from_dims(dims)
    return ModelFacts("transformers", preset.name, hf=HfFacts(dims, tensors, "gptq" if gptq else ""), exact=False)


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


def plan_preset(key: str, preset: Preset, hw: Hardware, library: list[tuple[str, str]],
                read_facts: ReadFacts, cal: Calibration = Calibration(), goal: Goal = "fastest",
                endpoints: Optional[Collection[str]] = None) -> RankedPreset:
    """Plan one preset through the one door (``core.load_plan.plan_load``): its fixed load options
    kept, the automatic ones optimised. From the model's own files when they are on disk (under the
    preset's own repository folder only), else from the preset's description. A remote preset has no
    local plan: it says where it runs, or that its endpoint (``endpoints``: the stored names) is unknown."""
    if preset.backend == "remote":
        return RankedPreset(key, preset, None, None, False, remote_problem(preset, endpoints))
    local = match_local(preset.model, library, preset.backend)
    facts: Optional[ModelFacts] = None
    problem = ""
    if local is not None:
        try:
            facts = read_facts(local, preset.backend)
        except (ValueError, OSError) as exc:
            problem = f"the model on disk cannot be read: {exc}"
    if facts is None:
        try:
            facts = facts_from_hint(preset)
        except ValueError as exc:
            return RankedPreset(key, preset, None, local, False, problem or str(exc))
    try:
        plan = plan_load(facts, hw, cal, preset.load_options(), goal)
    except ValueError as exc:
        return RankedPreset(key, preset, None, local, facts.exact, str(exc))
    extra = check_requirements(preset, hw)
    if not facts.exact:
        extra.append("planned from the preset's description; exact once the file is downloaded")
    if extra:
        plan = replace(plan, reasons=plan.reasons + tuple(extra))
    return RankedPreset(key, preset, plan, local, facts.exact, problem)


def remote_problem(preset: Preset, endpoints: Optional[Collection[str]]) -> str:
    """The table's note for a remote preset: where it runs, or why it cannot."""
    if endpoints is not None and preset.endpoint not in endpoints:
        return (f"names the remote endpoint {preset.endpoint!r}, which is not stored here; an admin adds it "
                "under Remote engines in the Models tab")
    return f"runs on {preset.endpoint}"
