"""Resources tab handlers: plain functions of (context, sampler, session, inputs) that tests call
directly. The panel's outputs, in order, are ``PANEL_OUTPUTS``; the per-browser state (gr.State)
is a ``Seen`` record of what that browser was last sent, so unchanged parts are not sent again."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backends.base import ModelInfo
from backends.manager import ManagerState
from core.placement import LoadedModel, decode_uses_cpu, placement_card, vram_warnings
from core.resources import PLOT_METRICS, ResourceSample, history_csv
from ui.context import AppContext
from ui.resources_view import gauges_html, has_gpus, plot_data, status_line

PANEL_OUTPUTS = ("status", "gauges", *PLOT_METRICS, "placement", "warning", "seen", "timer")
GPU_PLOTS = ("vram", "gpu_util")
EXPORTS_KEPT = 10
PLOT_EVERY = 5  # samples between plot redraws
CPU_DECODE_PLOT_EVERY = 30  # the same while the model generates on the CPU: plots are what a browser redraws slowest
REFRESH_S = 1.0       # the panel's timer
CPU_DECODE_REFRESH_S = 5.0  # while the model generates on the CPU: the browser's redraws would slow it


def loaded_model(info: Optional[ModelInfo]) -> Optional[LoadedModel]:
    if info is None:
        return None
    return LoadedModel(info.name, info.n_layer, info.n_gpu_layers, info.gpu_offload_supported, info.n_ctx,
                       info.kv_type, info.flash_attn, tuple((b.device, b.kind, b.mib) for b in info.buffers),
                       info.worker_pid, info.n_cpu_moe, info.n_parallel)


def _not_ready(state: ManagerState) -> Optional[str]:
    name = state.spec.display_name if state.spec else ""
    if state.status == "loading":
        return f"**Loading {name}…** The placement appears once it is loaded."
    if state.status in ("failed", "crashed"):
        return f"**No model loaded.** {state.error or ''}"
    return None


def placement_text(ctx: AppContext, latest: Optional[ResourceSample]) -> str:
    state = ctx.manager.state()
    waiting = _not_ready(state)
    if waiting:
        return waiting
    if state.info is not None and state.info.backend == "remote":
        from ui.remote_handlers import resources_card

        return resources_card(state.info, ctx.remote_health)
    model = loaded_model(state.info)
    worker_vram = {g.index: g.process_bytes("worker") for g in latest.gpus} if latest else {}
    gen = latest.generation if latest else None
    return placement_card(model, ctx.loaded_plan(), worker_vram,
                          latest.system.worker_rss_bytes if latest and latest.system else None,
                          gen.tokens_per_s if gen is not None and not gen.active else None)


def warning_text(ctx: AppContext, latest: Optional[ResourceSample]) -> str:
    if latest is None:
        return ""
    model = loaded_model(ctx.manager.state().info)
    return "\n\n".join(vram_warnings(latest.gpus, ctx.loaded_plan(), model))


@dataclass(frozen=True)
class Seen:
    """What one browser was last sent (its gr.State), so that unchanged parts are not sent again."""
    seq: int = 0        # the sample shown
    plotted: int = 0    # the sample the plots were drawn at
    placement: str = ""
    warning: str = ""
    refresh_s: float = REFRESH_S


def refresh_interval(ctx: AppContext, latest: Optional[ResourceSample]) -> float:
    """Every second, except while a reply is generated on the CPU: then every few seconds, because a
    browser on the same machine redrawing the panel takes CPU time from the model (docs/BENCHMARKS.md)."""
    if latest is not None and latest.generation.active and decode_uses_cpu(loaded_model(ctx.manager.state().info)):
        return CPU_DECODE_REFRESH_S
    return REFRESH_S


def panel(ctx: AppContext, sampler, seen: Any) -> tuple:
    """Every panel output; what did not change since ``seen`` is skipped. The gauges follow every
    refresh; the plots are redrawn every ``PLOT_EVERY`` samples (redrawing five plots costs a browser
    far more CPU than the rest of the panel: see docs/BENCHMARKS.md)."""
    seen = seen if isinstance(seen, Seen) else Seen()
    samples = sampler.samples()
    latest = samples[-1] if samples else None
    if latest is None or latest.seq == seen.seq:
        skip = tuple(gr.skip() for _ in PANEL_OUTPUTS)
        return skip if latest is not None else (status_line(None, {}), gauges_html(None), *skip[2:])
    gpus = has_gpus(samples)
    refresh = refresh_interval(ctx, latest)
    every = CPU_DECODE_PLOT_EVERY if refresh == CPU_DECODE_REFRESH_S else PLOT_EVERY
    replot = not seen.plotted or latest.seq - seen.plotted >= every
    plots = []
    for metric in PLOT_METRICS:
        if not replot:
            plots.append(gr.skip())
        elif metric in GPU_PLOTS and not gpus:
            plots.append(gr.update(visible=False))
        else:
            plots.append(gr.update(value=plot_data(samples, metric), visible=True))
    placement, warning = placement_text(ctx, latest), warning_text(ctx, latest)
    now = Seen(latest.seq, latest.seq if replot else seen.plotted, placement, warning, refresh)
    status = sampler.status()
    return (status_line(latest, status, refresh, every * status.get("interval_s", 1)), gauges_html(latest), *plots,
            placement if placement != seen.placement else gr.skip(),
            warning if warning != seen.warning or not seen.seq else gr.skip(), now,
            # Only the interval: an "active" here could restart a timer its tab has just stopped.
            gr.update(value=refresh) if refresh != seen.refresh_s else gr.skip())


def _lease(seen: Any) -> float:
    """How long this browser's sampling outlives its last tick: three of its refresh intervals."""
    return 3 * (seen.refresh_s if isinstance(seen, Seen) else REFRESH_S) + 1


def tick(ctx: AppContext, sampler, session: str, seen: Any) -> tuple:
    """A panel timer tick: renews this browser's lease on the sampler and refreshes the panel."""
    out = panel(ctx, sampler, seen)
    sent = out[PANEL_OUTPUTS.index("seen")]
    sampler.watch(session, _lease(sent if isinstance(sent, Seen) else seen), unless_left=True)
    return out


def open_tab(ctx: AppContext, sampler, session: str) -> tuple:
    """The tab was selected: start sampling for this browser, draw the panel, start the timer."""
    sampler.watch(session, _lease(None))
    out = panel(ctx, sampler, None)
    seen = out[PANEL_OUTPUTS.index("seen")]
    refresh = seen.refresh_s if isinstance(seen, Seen) else REFRESH_S
    return (*out[:-1], gr.Timer(refresh, active=True))


def close_tab(sampler, session: str) -> Any:
    """Another tab was selected (or the page closed): stop this browser's sampling and timer."""
    sampler.unwatch(session)
    return gr.Timer(active=False)


def export_csv(sampler, folder: Optional[Path] = None) -> str:
    """Write the sampled history to a CSV file and return its path."""
    samples = sampler.samples()
    if not samples:
        raise gr.Error("Nothing to export yet: the panel samples only while this tab is open. "
                       "Wait a second for the first sample, then export again.")
    folder = folder or Path(tempfile.gettempdir()) / f"fitchat-resources-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fitchat-resources-{time.strftime('%Y%m%d-%H%M%S')}-{samples[-1].seq}.csv"
    path.write_text(history_csv(samples), encoding="utf-8")
    for old in sorted(folder.glob("fitchat-resources-*.csv"), key=lambda p: p.stat().st_mtime)[:-EXPORTS_KEPT]:
        old.unlink(missing_ok=True)
    return str(path)
