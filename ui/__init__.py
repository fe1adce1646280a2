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
/* Text contrast at least 4.5:1 (WCAG AA): the default theme's white on orange Send is 2.8:1 and its
   grey descriptions 1.9:1. Darker fills and greys, light mode and dark mode. */
.gradio-container {
  --button-primary-background-fill: #c2410c; --button-primary-background-fill-hover: #9a3412;
  --button-primary-text-color: #ffffff; --button-primary-text-color-hover: #ffffff;
  --button-cancel-background-fill: #b91c1c; --button-cancel-background-fill-hover: #991b1b;
  --button-cancel-text-color: #ffffff; --button-cancel-text-color-hover: #ffffff;
  --block-info-text-color: #4b5563; --body-text-color-subdued: #4b5563; --input-placeholder-color: #6b7280;
  --block-title-text-color: #374151; --block-label-text-color: #374151;
}
.dark .gradio-container, .gradio-container.dark {
  --block-info-text-color: #d1d5db; --body-text-color-subdued: #d1d5db; --input-placeholder-color: #9ca3af;
  --block-title-text-color: #e5e7eb; --block-label-text-color: #e5e7eb;
}
/* On a phone the Presets table scrolls inside its own box instead of widening the page. */
#presets-table { max-width: 100%; overflow-x: auto; }
#presets-table table { min-width: 720px; }
"""

# Runs once when the page opens (launch(js=...)). Keyboard: Esc stops a reply, Ctrl+Shift+O starts a
# new conversation, focus goes back to the message box after Send / New chat. Copy on a reply copies
# its text without the stats footer (<sub> lines the server appends under a reply).
PAGE_JS = r"""
() => {
  const click = (id) => { const b = document.getElementById(id); if (b) b.click(); };
  const box = () => document.querySelector('#message textarea');
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !e.ctrlKey && !e.altKey && !e.metaKey) { click('stop'); }
    else if ((e.ctrlKey || e.metaKey) && e.shiftKey && (e.key === 'O' || e.key === 'o')) {
      e.preventDefault(); click('new-chat'); setTimeout(() => box() && box().focus(), 50);
    }
  }, true);
  document.addEventListener('click', (e) => {
    if (e.target.closest && e.target.closest('#send, #new-chat')) setTimeout(() => box() && box().focus(), 50);
  }, true);
  const strip = (text) => text.replace(/\n*<sub>[^<\n]*<\/sub>/g, '');
  if (navigator.clipboard && navigator.clipboard.writeText) {
    const write = navigator.clipboard.writeText.bind(navigator.clipboard);
    navigator.clipboard.writeText = (text) => write(typeof text === 'string' ? strip(text) : text);
  }
  // No clipboard API (plain http from another machine): Gradio copies a hidden textarea it adds
  // to <body> with execCommand("copy"); the copy event lets us put the text without stats instead.
  document.addEventListener('copy', (e) => {
    const t = e.target;
    if (t && t.tagName === 'TEXTAREA' && t.parentElement === document.body && e.clipboardData
        && /<sub>/.test(t.value)) {
      e.clipboardData.setData('text/plain', strip(t.value));
      e.preventDefault();
    }
  }, true);
}
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
