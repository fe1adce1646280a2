"""The Gradio app, built by a factory: ``build_app(ctx)`` returns the Blocks. One module per tab."""
from __future__ import annotations

import gradio as gr

from ui import chat_tab, placeholder_tabs
from ui.context import AppContext

CSS = """
#model-status p { margin: 0; font-size: 0.9em; }
footer { display: none !important; }
"""


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="FitChat", analytics_enabled=False) as app:
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_tab.build(ctx)
            with gr.Tab("Models", id="models"):
                placeholder_tabs.build_models(ctx)
            with gr.Tab("Presets", id="presets"):
                placeholder_tabs.build_presets(ctx)
            with gr.Tab("Resources", id="resources"):
                placeholder_tabs.build_resources(ctx)
    return app
