"""Tabs whose features arrive in later milestones. Each says what it will hold; none shows
made-up data."""
from __future__ import annotations

import gradio as gr

from ui.context import AppContext


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def build_models(ctx: AppContext) -> None:
    gr.Markdown(
        "### Models\n"
        "Coming next: search the Hugging Face Hub, see whether each quantisation fits this machine "
        "*before* downloading, and download with progress, resume and sha256 verification.\n\n"
        f"Until then, put `.gguf` files in `{ctx.settings.models_dir}` (or start with "
        "`python app.py --model PATH.gguf`); they appear in the Chat tab's **Model** list.")
    rows = [[e.name, e.source, _size(e.size_bytes)] for e in ctx.catalog().entries]
    gr.Dataframe(value=rows, headers=["Model", "Source", "Size"], label="Models on disk now",
                 interactive=False, elem_id="models-on-disk")


def build_presets(ctx: AppContext) -> None:
    gr.Markdown(
        "### Presets\n"
        "Coming next: YAML presets (GGUF Q4_K_M via llama.cpp, NF4 and GPTQ via transformers) ranked for "
        "this machine, each with a fit badge and predicted VRAM, RAM and tokens/s.")


def build_resources(ctx: AppContext) -> None:
    gr.Markdown(
        "### Resources\n"
        "Coming next: live VRAM, GPU, RAM and CPU use with history plots, and where the loaded model "
        "really sits (layers on the GPU, KV cache and compute buffers).")
