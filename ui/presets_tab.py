"""Presets tab (issue 3 fills it): hardware at a glance, presets ranked for this machine."""
from __future__ import annotations

import gradio as gr

from ui.context import AppContext


def build(ctx: AppContext) -> None:
    gr.Markdown(
        "### Presets\n"
        "Coming next: YAML presets (GGUF Q4_K_M via llama.cpp, NF4 and GPTQ via transformers) ranked for "
        "this machine, each with a fit badge and predicted VRAM, RAM and tokens/s.")
