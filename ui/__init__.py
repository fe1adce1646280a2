"""The Gradio app, built by a factory: ``build_app(ctx)`` returns the Blocks. One module per tab,
each with ``build(ctx)``."""
from __future__ import annotations

import gradio as gr

from ui import chat_tab, models_tab, presets_tab, resources_tab
from ui.context import AppContext

CSS = """
#model-status p { margin: 0; font-size: 0.9em; }
footer { display: none !important; }
"""

TABS = (("Chat", "chat", chat_tab), ("Models", "models", models_tab), ("Presets", "presets", presets_tab),
        ("Resources", "resources", resources_tab))


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="FitChat", analytics_enabled=False) as app:
        with gr.Tabs(elem_id="tabs"):
            for label, tab_id, module in TABS:
                with gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}"):
                    module.build(ctx)
    return app
