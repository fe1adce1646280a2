"""The one door into the planner. Every surface (Presets ranking and Load, the Models tab's badges,
the Library's Load, the chat's Model panel, the API's loads through the manager, ``app.py plan``)
calls ``plan_load`` with the model's facts, the machine, its calibration and the load options, and
a *Load* executes ``applied_options(plan, options)``: exactly the plan that was shown.

Rules, the same everywhere: an option given is kept; an option left empty (``None``, or
``kv_type="auto"``) is optimised for the goal. The slots (``parallel``) are part of the plan too
(``core/parallel_plan.py``): their KV caches are in its memory and a Load runs as many as it shows.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

from core.hardware import Hardware
from core.hf_model_shape import ModelDims, TensorInfo
from core.hub_fit import plan_transformers, transformers_best_ctx
from core.model_shape import ModelShape
from core.multi_gpu_plan import split_choice, split_updates
from core.options import LoadOptions, TransformersLoadOptions
from core.parallel_plan import with_slots
from core.plan import Plan
from core.planner import KV_TYPES_FA, Calibration, Goal, default_context, evaluate_as_asked, optimise

AnyOptions = Union[LoadOptions, TransformersLoadOptions]


@dataclass(frozen=True)
class HfFacts:
    """A transformers checkpoint as the planner needs it: config dimensions and the tensor table."""
    dims: ModelDims
    tensors: tuple[TensorInfo, ...]
    quant_method: str = ""
    weight_bytes: int = 0
    n_files: int = 0


@dataclass(frozen=True)
class ModelFacts:
    """What is known about one model before loading it: a GGUF's shape or a transformers checkpoint.
    ``exact``: read from the model's own files (else from a preset's description)."""
    backend: str                      # "llama_cpp" | "transformers"
    name: str
    shape: Optional[ModelShape] = None
    hf: Optional[HfFacts] = None
    exact: bool = True
    chat_template: Optional[str] = None   # a GGUF's raw tokenizer.chat_template (None: none)

    def __post_init__(self) -> None:
        if self.backend == "llama_cpp" and self.shape is None:
            raise ValueError("llama.cpp facts need the model's shape")
        if self.backend == "transformers" and self.hf is None:
            raise ValueError("transformers facts need the checkpoint's dimensions and tensors")
        if self.backend not in ("llama_cpp", "transformers"):
            raise ValueError(f"unknown backend {self.backend!r}")


def default_options(backend: str) -> AnyOptions:
    return TransformersLoadOptions() if backend == "transformers" else LoadOptions()


def plan_load(facts: ModelFacts, hw: Hardware, cal: Calibration = Calibration(),
              options: Optional[AnyOptions] = None, goal: Goal = "fastest") -> Plan:
    """The plan for loading ``facts`` on ``hw`` with ``options`` (None: everything automatic)."""
    options = options if options is not None else default_options(facts.backend)
    if facts.backend == "transformers":
        return _plan_transformers(facts.hf, hw, cal, _typed(options, TransformersLoadOptions), goal)
    return _plan_llama_cpp(facts.shape, hw, cal, _typed(options, LoadOptions), goal)


def _typed(options: AnyOptions, kind: type) -> AnyOptions:
    if not isinstance(options, kind):
        raise ValueError(f"{type(options).__name__} cannot load a model of this kind ({kind.__name__} needed)")
    return options


def _kv_choices(opts: LoadOptions) -> tuple[str, ...]:
    if opts.kv_type != "auto":
        return (opts.kv_type,)
    return KV_TYPES_FA if opts.flash_attn else ("f16",)


def _plan_llama_cpp(shape: ModelShape, hw: Hardware, cal: Calibration, opts: LoadOptions, goal: Goal) -> Plan:
    return _slotted(_plan_placement(shape, hw, cal, opts, goal), hw, cal, opts.parallel)


def _slotted(plan: Plan, hw: Hardware, cal: Calibration, asked: Optional[int]) -> Plan:
    """``plan`` with its slots (a given count kept, an empty one chosen): every slot's KV cache in its
    memory. Slots asked for that do not fit make it a plan that does not fit, with the numbers."""
    if plan.fit == "no_fit":
        return replace(plan, extra={**plan.extra, "n_parallel": asked or 1})
    try:
        return with_slots(plan, hw, asked, cal.ram_margin_bytes, cal.vram_margin_bytes)
    except ValueError as exc:
        return replace(plan, fit="no_fit", reasons=(*plan.reasons, str(exc)),
                       extra={**plan.extra, "n_parallel": asked})


def _plan_placement(shape: ModelShape, hw: Hardware, cal: Calibration, opts: LoadOptions, goal: Goal) -> Plan:
    kv_types = _kv_choices(opts)
    split = split_choice(opts)
    n_cpu_moe = opts.n_cpu_moe if shape.is_moe else 0
    if opts.n_gpu_layers is None:
        return optimise(shape, hw, goal=goal, n_ctx=opts.n_ctx, flash_attn=opts.flash_attn, n_ubatch=opts.n_batch,
                        cal=cal, kv_types=kv_types, gpu_split=split, kv_placements=opts.kv_placements,
                        n_cpu_moe=n_cpu_moe)
    ctx = default_context(shape, opts.n_ctx)
    placement = "ram" if opts.kv_placement == "ram" else "gpu"
    # Layers fixed, the rest automatic: the exact f16 cache when it fits, else the first smaller type
    # that does; for an MoE model with experts automatic, the fewest expert layers in RAM that fit.
    expert_options = (n_cpu_moe,) if n_cpu_moe is not None else range(shape.n_layer + 1)
    plans = [evaluate_as_asked(shape, hw, opts.n_gpu_layers, ctx, kv, opts.flash_attn, opts.n_batch, cal, goal=goal,
                               gpu_split=split, kv_placement=placement, n_cpu_moe=n)
             for kv in kv_types for n in expert_options]
    fitting = [p for p in plans if p.fit != "no_fit"]
    return fitting[0] if fitting else plans[-1]


def _plan_transformers(hf: HfFacts, hw: Hardware, cal: Calibration, opts: TransformersLoadOptions,
                       goal: Goal) -> Plan:
    plan = plan_transformers(hf.dims, hf.tensors, hw, opts.quantization, opts.n_ctx, cal)
    if goal == "context" and opts.n_ctx is None and plan.fit != "no_fit":
        longest = transformers_best_ctx(hf.dims, hf.tensors, hw, opts.quantization, plan, cal)
        plan = plan_transformers(hf.dims, hf.tensors, hw, opts.quantization, longest, cal)
    return replace(plan, goal=goal)


def applied_options(plan: Plan, options: Optional[AnyOptions] = None) -> AnyOptions:
    """The options a load executes to get ``plan``: every automatic choice replaced by the plan's."""
    if plan.backend == "transformers":
        base = options if isinstance(options, TransformersLoadOptions) else TransformersLoadOptions()
        return base.model_copy(update={"quantization": plan.quantization or base.quantization, "n_ctx": plan.n_ctx})
    base = options if isinstance(options, LoadOptions) else LoadOptions()
    return base.model_copy(update={"n_gpu_layers": plan.n_gpu_layers, "n_ctx": plan.n_ctx, "kv_type": plan.kv_type,
                                   "flash_attn": plan.flash_attn, "kv_placement": plan.kv_placement, "n_cpu_moe": plan.n_cpu_moe,
                                   "parallel": plan.extra.get("n_parallel", base.parallel), **split_updates(plan)})


def plan_with_best_context(facts: ModelFacts, hw: Hardware, cal: Calibration = Calibration(),
                           options: Optional[AnyOptions] = None) -> tuple[Plan, int]:
    """The fastest plan (what a badge shows and a Load applies), and the longest context that keeps
    its speed (0 when nothing fits)."""
    fastest = plan_load(facts, hw, cal, options, "fastest")
    if fastest.fit == "no_fit":
        return fastest, 0
    return fastest, plan_load(facts, hw, cal, options, "context").n_ctx


def same_placement(a: Plan, b: Plan) -> bool:
    """Two plans put the model in the same place: what ``badge = load`` compares."""
    keys = ("backend", "fit", "n_gpu_layers", "n_ctx", "kv_type", "flash_attn", "quantization", "kv_placement",
            "split_mode", "tensor_split", "main_gpu")
    return (all(getattr(a, k) == getattr(b, k) for k in keys + ("n_cpu_moe",))
            and a.extra.get("hide_gpus", False) == b.extra.get("hide_gpus", False))

