"""Resources tab (issue 6 fills it): live VRAM/GPU/RAM/CPU, history plots, model placement."""
from __future__ import annotations

import gradio as gr

from ui.context import AppContext


def build(ctx: AppContext) -> None:
    gr.Markdown(
        "### Resources\n"
        "Coming next: live VRAM, GPU, RAM and CPU use with history plots, and where the loaded model "
        "really sits (layers on the GPU, KV cache and compute buffers).")
