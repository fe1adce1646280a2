"""Resources tab: live VRAM/GPU/RAM/CPU gauges, five-minute history plots, where the loaded model
really sits, and a CSV export. Wiring only; the logic is in ``ui.resources_handlers``.

The panel's timer runs only while this tab is selected in a visible page: selecting the tab starts
it, selecting another tab or closing the page stops it (and Gradio's timer skips ticks while the
page is hidden). The sampler samples only while some browser's timer keeps renewing its lease.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from ui import resources_handlers as h
from ui.context import AppContext
from ui.resources_view import GAUGE_CSS

TAB_ID = "resources"
PLOTS = (  # metric, title, y axis, y limits
    ("vram", "VRAM (GiB)", "GiB", [0, None]), ("gpu_util", "GPU utilisation (%)", "%", [0, 100]),
    ("ram", "RAM (GiB)", "GiB", [0, None]), ("cpu", "CPU (%)", "%", [0, 100]),
    ("tokens", "Decode speed (tokens/s)", "tokens/s", [0, None]),
)


def _sampler(ctx: AppContext):
    if ctx.sampler_factory is not None:
        return ctx.sampler_factory(ctx)
    from services.sampler import for_manager

    return for_manager(ctx.manager)


def build(ctx: AppContext) -> Callable[[gr.Blocks, dict], None]:
    sampler = _sampler(ctx)  # one per app; its thread starts when a browser first opens this tab
    seen = gr.State(None)
    timer = gr.Timer(1.0, active=False)
    status = gr.Markdown("Open this tab to start sampling.", elem_id="resources-status")
    gauges = gr.HTML("", css_template=GAUGE_CSS, js_on_load=None, elem_id="resources-gauges")
    warning = gr.Markdown("", elem_id="resources-warning")
    plots = {}
    with gr.Row(equal_height=True):
        for metric, title, y_title, y_lim in PLOTS:
            plots[metric] = gr.LinePlot(
                x="seconds", y="value", color="series", title=title, x_title="seconds ago", y_title=y_title,
                x_lim=[-sampler.history_s, 0], y_lim=y_lim, height=220, show_label=False, min_width=320,
                elem_id=f"resources-plot-{metric}", visible=metric not in h.GPU_PLOTS)
    with gr.Accordion("Where the model sits", open=True, elem_id="resources-placement-accordion"):
        placement = gr.Markdown("", elem_id="resources-placement")
    with gr.Row():
        export_btn = gr.Button("Export history as CSV", elem_id="resources-export", size="sm", scale=0,
                               min_width=200)
        csv_file = gr.File(label="History (CSV)", elem_id="resources-csv", visible=False, interactive=False)

    by_name = {"status": status, "gauges": gauges, **plots, "placement": placement, "warning": warning, "seen": seen,
               "timer": timer}
    outputs = [by_name[name] for name in h.PANEL_OUTPUTS]

    def on_tick(request: gr.Request, last_seen):
        return h.tick(ctx, sampler, request.session_hash, last_seen)

    def on_open(request: gr.Request):
        return h.open_tab(ctx, sampler, request.session_hash)

    def on_close(request: gr.Request):
        return h.close_tab(sampler, request.session_hash)

    def on_export():
        return gr.File(value=h.export_csv(sampler), visible=True)

    def resources_status() -> dict:
        """The sampler: ticks so far, browsers watching, whether its thread runs, the GPU note, CPU per tick."""
        return sampler.status()

    def resources_csv() -> str:
        """The sampled history (the last five minutes) as a CSV file."""
        return h.export_csv(sampler)

    timer.tick(on_tick, seen, outputs, api_visibility="private", queue=False, show_progress="hidden")
    export_btn.click(on_export, None, csv_file, api_visibility="private", queue=False)
    gr.api(resources_status, api_name="resources_status", queue=False)
    gr.api(resources_csv, api_name="resources_csv", queue=False)

    def wire(app: gr.Blocks, tabs: dict) -> None:
        tabs[TAB_ID].select(on_open, None, outputs, api_visibility="private", queue=False,
                            show_progress="hidden")
        for tab_id, tab in tabs.items():
            if tab_id != TAB_ID:
                tab.select(on_close, None, timer, api_visibility="private", queue=False)
        app.unload(on_close_page)

    def on_close_page(request: gr.Request):
        sampler.unwatch(request.session_hash)

    return wire
