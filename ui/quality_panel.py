"""Models tab, "Quality check" section: wiring only (logic and the admin check in ``ui.quality_handlers``)."""
from __future__ import annotations

from typing import Callable

import gradio as gr

from ui import quality_handlers as qh
from ui.context import AppContext
from ui.quiet_dropdown import Dropdown


def build(ctx: AppContext) -> Callable[[gr.Blocks, dict], None]:
    gr.Markdown("### Quality check\nPerplexity of the loaded model on a text that ships with FitChat (the GPL-3.0 "
                "licence text, 512-token windows as llama.cpp's perplexity tool). With a reference of the same "
                "model (f16/bf16 or Q8_0) also the KL divergence and top-1 agreement; the reference is loaded "
                "for a while, then your model again. Lower perplexity is better; compare only results on the "
                "same text.")
    job = gr.State(None, delete_callback=qh.stop_job)
    with gr.Row(equal_height=True):
        reference = Dropdown(label="Reference (optional)", elem_id="quality-ref", scale=4)
        windows = gr.Number(label="Windows (empty = all)", precision=0, minimum=1, maximum=10000,
                            elem_id="quality-windows", scale=2)
        run_btn = gr.Button("Measure quality", variant="primary", elem_id="quality-run", scale=1)
        stop_btn = gr.Button("Stop", variant="stop", elem_id="quality-stop", scale=1)
    progress = gr.HTML(elem_id="quality-progress")
    result = gr.Markdown(elem_id="quality-result")

    def on_run(request: gr.Request, ref_name, n_windows):
        yield from qh.run(ctx, request, ref_name, n_windows)

    run_btn.click(on_run, [reference, windows], [progress, result, job], api_name="quality_check",
                  concurrency_limit=1, concurrency_id="quality")
    stop_btn.click(qh.stop, job, result, api_name="stop_quality_check", concurrency_id="quick",
                   concurrency_limit=None)
    return lambda app, tabs: tabs["models"].select(lambda: qh.reference_choices(ctx), None, reference,
                                                   api_visibility="private", concurrency_limit=2,
                                                   concurrency_id="library")
