"""``python app.py plan MODEL``: what fits on this (or a described) machine, and how fast.

    python app.py plan model.gguf                          # optimise for this machine
    python app.py plan model.gguf --profile rtx3060-12g    # ... for a described machine
    python app.py plan model.gguf --vram-gib 12 --ram-gib 64 --goal context
    python app.py plan model.gguf --n-gpu-layers 20 --ctx 8192 --kv q8_0 --json   # one configuration

MODEL is a GGUF file (the first shard of a split model finds the others) or a preset (name or
YAML file). Exits 0 when the plan fits, 1 when nothing fits, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from cli.args import OneLineParser, UsageError, number_list
from core.gguf_header import GGUFError
from core.hardware import GIB, GpuInfo, Hardware
from core.model_shape import ModelShape
from core.multi_gpu import device_rows
from core.placement import slots_text
from core.plan import Plan
from core.load_plan import ModelFacts, plan_load
from core.parallel_plan import with_slots
from core.options import KV_TYPES, LoadOptions, describe_validation_error
from core.planner import Calibration, evaluate
from core.presets import PresetError
from services.model_files import gguf_shape
from services.paths import project_root

DEFAULT_GPU_BANDWIDTH = 400e9


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="app.py plan", description="Plan a model for a machine before loading it.")
    p.add_argument("model", help="GGUF file, or a preset name / YAML file")
    hw = p.add_argument_group("machine (default: this one)")
    hw.add_argument("--profile", help="hardware profile: a name from profiles/ or a YAML/JSON file")
    hw.add_argument("--vram-gib", type=float, help="free GPU memory to plan for (adds a generic GPU if none)")
    hw.add_argument("--gpu-bandwidth-gb-s", type=float, help="bandwidth of that generic GPU (default 400)")
    hw.add_argument("--ram-gib", type=float, help="available RAM to plan for")
    p.add_argument("--goal", choices=("fastest", "context"), default="fastest")
    cfg = p.add_argument_group("evaluate one configuration instead of optimising")
    cfg.add_argument("--n-gpu-layers", type=int)
    cfg.add_argument("--ctx", type=int)
    cfg.add_argument("--kv", choices=KV_TYPES)
    cfg.add_argument("--n-cpu-moe", type=int, help="MoE: keep the experts of the first N layers in RAM")
    cfg.add_argument("--parallel", type=int, help="replies at once (slots, a KV cache each; default: planned)")
    gpus = p.add_argument_group("several GPUs (default: the planner chooses)")
    gpus.add_argument("--split-mode", choices=("auto", "layer", "row", "none"), default="auto")
    gpus.add_argument("--tensor-split", type=number_list, metavar="A,B,...", help="share per GPU, e.g. 3,1")
    gpus.add_argument("--main-gpu", type=int, metavar="N")
    p.add_argument("--no-flash-attn", action="store_true")
    p.add_argument("--no-dry-run", action="store_true", help="skip asking llama.cpp for its compute buffers")
    p.add_argument("--data-dir", type=Path, help="where calibration is kept (default: the app's)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def machine(args: argparse.Namespace) -> Hardware:
    from services.hardware import load_profile, probe

    for value, flag in ((args.vram_gib, "--vram-gib"), (args.ram_gib, "--ram-gib")):
        if value is not None and not 0 < value <= 65536:
            raise UsageError(f"{flag} must be a positive number of GiB (got {value})")
    if args.profile:
        path = Path(args.profile)
        if not path.suffix:
            path = project_root() / "profiles" / f"{args.profile}.yaml"
        if not path.is_file():
            raise UsageError(f"--profile: no such profile {args.profile!r}")
        try:
            hw = load_profile(path)
        except ValueError as exc:
            raise UsageError(f"--profile: {exc}") from None
    else:
        hw = probe(measure_ram_bandwidth=True)
    if args.vram_gib is not None:
        if hw.gpus:
            hw = hw.with_budget(vram_bytes=int(args.vram_gib * GIB))
        else:
            gpu = GpuInfo(0, f"GPU with {args.vram_gib:g} GiB (assumed)", int(args.vram_gib * GIB),
                          int(args.vram_gib * GIB), bandwidth_bytes_per_s=(args.gpu_bandwidth_gb_s or 400) * 1e9)
            hw = replace(hw, gpus=(gpu,), llama_gpu_offload=True, source=f"{hw.source} + assumed GPU")
    if args.ram_gib is not None:
        hw = replace(hw, ram_available_bytes=int(args.ram_gib * GIB),
                     ram_total_bytes=max(hw.ram_total_bytes, int(args.ram_gib * GIB)))
    return hw


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    """The load options the flags give; what is not given stays automatic (the same rules as a Load)."""
    try:
        return LoadOptions(n_gpu_layers=args.n_gpu_layers, n_ctx=args.ctx, kv_type=args.kv or "auto",
                           flash_attn=not args.no_flash_attn, split_mode=args.split_mode,
                           tensor_split=args.tensor_split, main_gpu=args.main_gpu, n_cpu_moe=args.n_cpu_moe,
                           parallel=args.parallel)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def make_plan(args: argparse.Namespace, shape: ModelShape, hw: Hardware, cal: Calibration,
              model_path: Path | None) -> Plan:
    flash = not args.no_flash_attn
    try:
        plan = plan_load(ModelFacts("llama_cpp", shape.name, shape, exact=model_path is not None), hw, cal,
                         options_from_args(args), args.goal)
    except ValueError as exc:  # e.g. a tensor_split for GPUs this machine does not have
        raise UsageError(str(exc)) from None
    # llama.cpp can only dry-run for the machine it runs on, with the GPUs its build can use.
    same_machine = hw.source == "probe" and (hw.can_offload or plan.n_gpu_layers == 0)
    hidden = plan.extra.get("hide_gpus", False)  # a dry run here would see the GPU the worker will not
    if plan.devices:  # the dry run sums the GPUs' buffers; the per-GPU estimate stays
        return plan
    experts = plan.n_cpu_moe > 0  # the dry run cannot place experts: the estimate stays
    if model_path is None or args.no_dry_run or plan.fit == "no_fit" or not same_machine or hidden or experts:
        return plan
    from services.dry_run import compute_buffers

    measured = compute_buffers(str(model_path), plan.n_ctx, plan.n_gpu_layers, plan.kv_type, flash)
    if measured is None:
        return replace(plan, reasons=plan.reasons + ("llama.cpp dry run unavailable: compute buffers estimated",))
    exact = evaluate(shape, hw, plan.n_gpu_layers, plan.n_ctx, plan.kv_type, flash, cal=cal,
                     compute_override=measured, goal=plan.goal)
    try:  # the same slots as the estimate planned, their KV caches counted again
        exact = with_slots(exact, hw, plan.extra.get("n_parallel", 1), cal.ram_margin_bytes, cal.vram_margin_bytes)
        exact = replace(exact, extra={**exact.extra, "parallel_reason": plan.extra.get("parallel_reason")})
    except ValueError:
        return plan
    return replace(exact, reasons=exact.reasons + ("compute buffers from a llama.cpp dry run",))


def render(plan: Plan, shape: ModelShape, hw: Hardware) -> str:
    gib = lambda n: f"{n / GIB:6.2f} GiB"  # noqa: E731
    gpu = hw.gpu_summary
    lines = [
        f"Model     {shape.name}  ({shape.architecture}, {shape.n_layer} blocks, {shape.quantization or '?'}, "
        f"{shape.weight_bytes / GIB:.2f} GiB of weights, trained context {shape.n_ctx_train})",
        f"Machine   {gpu}; {hw.ram_available_bytes / GIB:.1f} GiB RAM available; {hw.cpu_physical_cores} cores "
        f"[{hw.source}]",
        f"Plan      {plan.fit_label}: n_gpu_layers {plan.n_gpu_layers}, context {plan.n_ctx}, KV {plan.kv_type}, "
        f"flash attention {'on' if plan.flash_attn else 'off'}"
        + (f"; experts of layers 0-{plan.n_cpu_moe - 1} in RAM (n_cpu_moe {plan.n_cpu_moe})" if plan.n_cpu_moe else ""),
        f"Slots     {slots_text(plan.extra.get('n_parallel', 1), plan)}",
        "",
        "            weights      KV cache     compute      overhead     total",
        f"  GPU     {gib(plan.gpu.weights)}  {gib(plan.gpu.kv_cache)}  {gib(plan.gpu.compute)}  "
        f"{gib(plan.gpu.overhead)}  {gib(plan.vram_bytes)}",
        *device_rows(plan),
        f"  RAM     {gib(plan.cpu.weights)}  {gib(plan.cpu.kv_cache)}  {gib(plan.cpu.compute)}  "
        f"{gib(plan.cpu.overhead)}  {gib(plan.ram_bytes)}",
        "",
        f"Speed     ~{plan.tokens_per_s:.1f} tokens/s (predicted decode at batch 1)",
    ]
    lines += [f"          - {reason}" for reason in plan.reasons]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if any(a == "--cluster" or a.startswith("--cluster=") for a in argv):  # a vLLM / llama-server deployment
        from cli.cluster_plan import run as run_cluster

        return run_cluster(argv)
    from services.calibration import load_calibration
    from services.paths import default_data_dir

    args = build_parser().parse_args(argv)
    if args.ctx is not None and not 128 <= args.ctx <= 1 << 24:
        raise UsageError(f"--ctx must be 128..{1 << 24} (got {args.ctx})")
    hw = machine(args)
    target = Path(args.model).expanduser()
    model_path = None
    try:
        if target.suffix == ".gguf":
            shape, model_path = gguf_shape(target), target
        else:
            shape = preset_shape(args.model)
    except GGUFError as exc:
        raise UsageError(f"{args.model}: {exc}") from None
    cal = load_calibration(args.data_dir or default_data_dir(), hw.gpus[0].name if hw.gpus else None)
    plan = make_plan(args, shape, hw, cal, model_path)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render(plan, shape, hw))
    return 0 if plan.fit != "no_fit" else 1


def preset_shape(name: str) -> ModelShape:
    from core.presets import shape_from_hint
    from services.presets_loader import load_presets

    path = Path(name)
    folder = path.parent if path.suffix in (".yaml", ".yml") else project_root() / "presets"
    presets, errors = load_presets([folder])
    preset = presets.get(path.stem)
    if preset is None:
        problem = next((e for e in errors if e.startswith(path.stem)), f"no preset or GGUF file named {name!r}")
        raise UsageError(problem)
    if preset.backend != "llama_cpp" or preset.shape is None:
        raise UsageError(f"preset {path.stem}: `plan` handles llama.cpp presets with a shape")
    try:
        return shape_from_hint(preset.shape, preset.name, preset.quantization)
    except PresetError as exc:
        raise UsageError(str(exc)) from None
