"""Presets tab handlers: rank the presets for this machine (or a described one), load one.
Plain functions of (context, inputs); every input is checked here."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backends.base import BackendError, LoadSpec
from core.hardware import GIB, Hardware
from core.load_plan import applied_options
from core.plan import Plan
from core.preset_plans import plan_preset, remote_problem
from core.options import SamplingOptions
from core.presets import EMBEDDED_KEY, Preset, RankedPreset, rank
from core.remote import RemoteConfigError
from services.hardware import list_profiles
from services.paths import project_root
from services.presets_loader import load_presets
from ui.context import AppContext
from ui.option_widgets import widget_values
from ui.quiet_dropdown import Dropdown
from ui.status import format_status

THIS_MACHINE = "This machine"
GOALS = {"Fastest": "fastest", "Longest context": "context"}
BADGE_COLOURS = {"full_gpu": "#15803d", "partial": "#b45309", "cpu_only": "#1d4ed8", "no_fit": "#b91c1c"}


def _folders(ctx: AppContext, name: str) -> list[Path]:
    return [project_root() / name, ctx.settings.data_dir / name]


def load_all_presets(ctx: AppContext) -> tuple[dict[str, Preset], list[str]]:
    return load_presets(_folders(ctx, "presets"))


def _profiles(ctx: AppContext) -> tuple[dict[str, Hardware], list[str]]:
    found: dict[str, Hardware] = {}
    errors: list[str] = []
    for folder in _folders(ctx, "profiles"):
        if folder.is_dir():
            profiles, problems = list_profiles(folder)
            errors += problems
            for hw in profiles.values():
                found[f"What if: {hw.label}"] = hw
    return found, errors


def machines(ctx: AppContext) -> tuple[dict[str, Hardware], list[str]]:
    """This machine (probed now) first, then the hardware profiles, by label."""
    profiles, errors = _profiles(ctx)
    this = {THIS_MACHINE: ctx.hardware()} if ctx.hardware is not None else {}
    return {**this, **profiles}, errors


def machine_labels(ctx: AppContext) -> list[str]:
    """The same labels without probing: building the tab must not wait for a RAM bandwidth test."""
    return ([THIS_MACHINE] if ctx.hardware is not None else []) + list(_profiles(ctx)[0])


def _library(ctx: AppContext) -> list[tuple[str, str]]:
    out = []
    for entry in ctx.catalog().entries:
        out.append((EMBEDDED_KEY if entry.source == "embedded" else entry.name, entry.path))
    return out


def hardware_summary(hw: Hardware) -> str:
    parts = []
    for gpu in hw.gpus:
        bandwidth = f", {gpu.bandwidth_bytes_per_s / 1e9:.0f} GB/s" if gpu.bandwidth_bytes_per_s else ""
        parts.append(f"**{gpu.name}**: {gpu.free_bytes / GIB:.1f} of {gpu.total_bytes / GIB:.1f} GiB free{bandwidth}")
    if not hw.gpus:
        parts.append("**No GPU**")
    flags = ", ".join(sorted(f.upper() for f in hw.cpu_flags if f in ("avx2", "avx512f", "amx_tile"))) or "no AVX2"
    parts.append(f"**RAM** {hw.ram_available_bytes / GIB:.1f} of {hw.ram_total_bytes / GIB:.1f} GiB available")
    parts.append(f"**CPU** {hw.cpu_physical_cores} cores ({flags})")
    if hw.gpus:
        parts.append("llama.cpp GPU offload: " + ("yes" if hw.llama_gpu_offload else "**no**"))
    line = " · ".join(parts)
    notes = "".join(f"\n\n_{html.escape(n)}_" for n in hw.notes)
    return line + notes


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n else "–"


def _remote_names(ctx: AppContext) -> list[str]:
    try:
        return ctx.remotes.names() if ctx.remotes is not None else []
    except RemoteConfigError:
        return []


def _badge(plan: Optional[Plan], problem: str) -> str:
    if plan is None and problem.startswith("runs on "):
        return '<span class="fc-badge" style="background:#6d28d9">Remote</span>'
    if plan is None:
        return '<span class="fc-badge" style="background:#6b7280">Cannot plan</span>'
    colour = BADGE_COLOURS[plan.fit]
    return f'<span class="fc-badge" style="background:{colour}">{html.escape(plan.fit_label)}</span>'


def render_table(entries: list[RankedPreset], quality: Optional[dict[str, str]] = None) -> str:
    """``quality``: model path -> its latest quality result, for presets whose file is on disk."""
    rows = []
    quality = quality or {}
    for e in entries:
        why = "; ".join(e.plan.reasons) if e.plan else e.problem
        # A plan that does not fit is no plan to show: its layers, context and speeds would read
        # as something this machine can do. The badge and the reasons say why.
        p = e.plan if e.plan is not None and e.plan.fit != "no_fit" else None
        disk = "on disk" if e.local_path else "not downloaded"
        if e.preset.backend == "remote":
            disk = f"{e.preset.model.id} on {e.preset.endpoint}"
        cells = [
            f"<b>{html.escape(e.preset.name)}</b><br><small>{html.escape(e.preset.backend)} · "
            + (f"{html.escape(e.preset.quantization)} · " if e.preset.quantization else "") + f"{html.escape(disk)}</small>",
            _badge(e.plan, e.problem),
            f"{p.n_gpu_layers}/{p.n_layer + 1}" if p else "–",
            f"{p.n_ctx:,} · {html.escape(p.kv_type)}" + (" · KV in RAM" if p.kv_placement == "ram" else "") if p else "–",
            _gib(p.vram_bytes) if p else "–",
            _gib(p.ram_bytes) if p else "–",
            f"{p.tokens_per_s:.1f}" if p else "–",
            html.escape(quality.get(e.local_path or "", "–")),
            f"<small>{html.escape(why)}</small>",
        ]
        rows.append("<tr data-preset=\"" + html.escape(e.key) + "\">" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Preset", "Fit", "GPU layers", "Context · KV", "VRAM", "RAM",
                                             "tokens/s", "Quality", "Why"))
    return f'<table class="fc-presets"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def ranked(ctx: AppContext, machine_label: Any, goal_label: Any) -> tuple[list[RankedPreset], Hardware, list[str]]:
    found, profile_errors = machines(ctx)
    if machine_label not in found:
        raise gr.Error("Pick a machine from the list.")
    if goal_label not in GOALS:
        raise gr.Error("Pick a goal from the list.")
    hw = found[machine_label]
    presets, preset_errors = load_all_presets(ctx)
    library = _library(ctx)
    planning = _planning(ctx)
    cal = planning.calibration(hw)
    endpoints = _remote_names(ctx)
    entries = [plan_preset(key, preset, hw, library, planning.facts, cal, GOALS[goal_label], endpoints)
               for key, preset in presets.items()]
    return rank(entries), hw, profile_errors + preset_errors


def refresh(ctx: AppContext, machine_label: Any, goal_label: Any) -> tuple[str, str, str, Any]:
    entries, hw, errors = ranked(ctx, machine_label, goal_label)
    problems = ""
    if errors:
        problems = "**Some files were skipped:**\n" + "\n".join(f"- {html.escape(e)}" for e in errors)
    choices = [(e.preset.name, e.key) for e in entries]
    from ui.quality_handlers import labels_by_path

    return hardware_summary(hw), render_table(entries, labels_by_path(ctx)), problems, Dropdown(choices=choices,
                                                                              value=choices[0][1] if choices else None)


def _planning(ctx: AppContext):
    if ctx.planning is None:
        raise gr.Error("Hardware probing is not available.")
    return ctx.planning


SAMPLING_FIELDS: tuple[str, ...] = tuple(SamplingOptions.model_fields)


def preset_sampling(preset: Preset) -> list[Any]:
    """The chat's Sampling widgets' values for ``preset``, in ``SAMPLING_FIELDS`` order: the values
    the preset's YAML sets, ``gr.skip()`` (the user's own setting stays) for the others."""
    given = preset.sampling.model_fields_set
    shown = widget_values(SamplingOptions, preset.sampling, SAMPLING_FIELDS)
    return [value if name in given else gr.skip() for name, value in zip(SAMPLING_FIELDS, shown)]


def preset_name(ctx: AppContext, key: Any) -> Optional[str]:
    """The name a load of preset ``key`` shows (None: not a preset)."""
    if not isinstance(key, str):
        return None
    preset = load_all_presets(ctx)[0].get(key)
    return preset.name if preset is not None else None


def load_preset(ctx: AppContext, key: Any, goal_label: Any = "Fastest") -> tuple[Any, ...]:
    """Load a preset with the plan the table shows for this machine: the same plan, applied as is.
    Returns the status line, then the preset's sampling values for the chat (``preset_sampling``)."""
    presets, _ = load_all_presets(ctx)
    if not isinstance(key, str) or key not in presets:
        raise gr.Error("Pick a preset from the list.")
    if goal_label not in GOALS:
        raise gr.Error("Pick a goal from the list.")
    preset = presets[key]
    if preset.backend == "remote":
        return _load_remote(ctx, preset)
    planning = _planning(ctx)
    hw = planning.machine()
    entry = plan_preset(key, preset, hw, _library(ctx), planning.facts, planning.calibration(hw), GOALS[goal_label])
    # Before "download it": a preset this machine cannot run is not worth a download.
    if entry.plan is not None and entry.plan.fit == "no_fit":
        raise gr.Error(f"{preset.name} cannot run on this machine (it does not fit): "
                       + "; ".join(entry.plan.reasons))
    if entry.local_path is None:
        where = (f"{preset.model.repo} ({preset.model.file or 'all files'})" if preset.model.repo
                 else preset.model.path or "the embedded model")
        raise gr.Error(f"{preset.name} is not on disk yet: download {where} in the Models tab first.")
    if entry.plan is None:
        raise gr.Error(f"{preset.name}: {entry.problem}")
    options = applied_options(entry.plan, preset.load_options())
    return _load_spec(ctx, preset, LoadSpec(entry.local_path, options, backend=preset.backend,
                                            display_name=preset.name))


def _load_remote(ctx: AppContext, preset: Preset) -> tuple[Any, ...]:
    """A remote preset: no local plan; its model is loaded from its stored endpoint."""
    if preset.endpoint not in _remote_names(ctx):
        raise gr.Error(f"{preset.name}: {remote_problem(preset, ())}.")
    return _load_spec(ctx, preset, LoadSpec(preset.model.id, preset.load_options(), backend="remote",
                                            display_name=preset.name))


def _load_spec(ctx: AppContext, preset: Preset, spec: LoadSpec) -> tuple[Any, ...]:
    """Loads ``spec`` for ``preset``: the status, and the chat's Sampling fields following the preset
    (left as they are when the load fails: a warning says why)."""
    try:
        ctx.manager.load(spec)
    except BackendError as exc:
        gr.Warning(str(exc))
        return (format_status(ctx.manager.state()), *[gr.skip()] * len(SAMPLING_FIELDS))
    if preset.sampling.model_fields_set:
        gr.Info(f"The chat's Sampling settings now follow {preset.name}.")
    return (format_status(ctx.manager.state()), *preset_sampling(preset))
