"""The Gradio app, built by a factory: ``build_app(ctx)`` returns the Blocks. One module per tab,
each with ``build(ctx)``."""
from __future__ import annotations

import gradio as gr

from ui import chat_tab, feedback, models_tab, presets_tab, resources_tab
from ui.context import AppContext

CSS = """
#model-status p { margin: 0; font-size: 0.9em; }
footer { display: none !important; }
.fc-presets { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.fc-presets th, .fc-presets td { border-bottom: 1px solid #e5e7eb; padding: 6px 8px; text-align: left;
  vertical-align: top; }
.fc-badge { color: white; border-radius: 6px; padding: 2px 8px; white-space: nowrap; font-weight: 600; }
"""

TABS = (("Chat", "chat", chat_tab), ("Models", "models", models_tab), ("Presets", "presets", presets_tab),
        ("Resources", "resources", resources_tab))


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="FitChat", analytics_enabled=False) as app:
        tabs: dict[str, gr.Tab] = {}
        wiring = []  # a tab's build may return wire(app, tabs), to react to the other tabs' events
        with gr.Tabs(elem_id="tabs"):
            for label, tab_id, module in TABS:
                with gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}") as tabs[tab_id]:
                    wire = module.build(ctx)
                if callable(wire):
                    wiring.append(wire)
        for wire in wiring:
            wire(app, tabs)
        feedback.install(app)  # expected errors as toasts, not blocking badges (every tab)
    return app
