"""Models tab (issue 4 fills it): search the Hub, fit before download, download, local library."""
from __future__ import annotations

import gradio as gr

from ui.context import AppContext


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def build(ctx: AppContext) -> None:
    gr.Markdown(
        "### Models\n"
        "Coming next: search the Hugging Face Hub, see whether each quantisation fits this machine "
        "*before* downloading, and download with progress, resume and sha256 verification.\n\n"
        f"Until then, put `.gguf` files in `{ctx.settings.models_dir}` (or start with "
        "`python app.py --model PATH.gguf`); they appear in the Chat tab's **Model** list.")
    rows = [[e.name, e.source, _size(e.size_bytes)] for e in ctx.catalog().entries]
    gr.Dataframe(value=rows, headers=["Model", "Source", "Size"], label="Models on disk now",
                 interactive=False, elem_id="models-on-disk")
