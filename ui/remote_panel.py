"""Models tab, "Remote engines" section: wiring only (logic and admin checks in ``ui.remote_handlers``)."""
from __future__ import annotations

from typing import Callable

import gradio as gr

from ui import remote_handlers as rh
from ui.context import AppContext
from ui.load_feedback import wire_load
from ui.quiet_dropdown import Dropdown


def build(ctx: AppContext) -> Callable[[gr.Blocks, dict], None]:
    gr.Markdown("### Remote engines\nChat through an OpenAI-compatible server on another machine (vLLM, "
                "llama.cpp's llama-server, Ollama, another FitChat). Admins only. The API key is stored "
                "owner-only on this machine and never shown again.")
    endpoints = gr.HTML("<p>Select this tab to list the remote engines.</p>", elem_id="remote-table")
    with gr.Row(equal_height=True):
        name = gr.Textbox(label="Name", placeholder="gpu-box", max_length=40, elem_id="remote-name", scale=2)
        url = gr.Textbox(label="Address", placeholder="http://gpu-box:8000/v1", max_length=300,
                         elem_id="remote-url", scale=4)
        key = gr.Textbox(label="API key (optional)", type="password", max_length=512, elem_id="remote-key", scale=3)
        add_btn = gr.Button("Add", variant="primary", elem_id="remote-add", scale=1)
    with gr.Row(equal_height=True):
        picked = Dropdown(label="Endpoint", elem_id="remote-choice", scale=2)
        list_btn = gr.Button("List models", elem_id="remote-list", scale=1)
        model = Dropdown(label="Remote model", elem_id="remote-model", scale=3)
        timeout = gr.Number(value=rh.TIMEOUT_FIELD.default, minimum=rh.TIMEOUT_RANGE[0], maximum=rh.TIMEOUT_RANGE[1],
                            step=1, label=rh.TIMEOUT_FIELD.title, info=rh.TIMEOUT_FIELD.description,
                            elem_id="remote-timeout", scale=2)
        load_btn = gr.Button("Load", variant="primary", elem_id="remote-load", scale=1)
        remove_btn = gr.Button("Remove", variant="stop", elem_id="remote-remove", scale=1)
    load_line = gr.Markdown(elem_id="remote-load-feedback")
    status = gr.Markdown(elem_id="remote-status")

    def on_add(request: gr.Request, name_text, url_text, key_text):
        return rh.add(ctx, request, name_text, url_text, key_text)

    def on_list(request: gr.Request, endpoint):
        return rh.list_models(ctx, request, endpoint)

    def on_load(request: gr.Request, endpoint, model_id, timeout_s):
        return rh.load(ctx, request, endpoint, model_id, timeout_s)

    def on_remove(request: gr.Request, endpoint):
        return rh.remove(ctx, request, endpoint)

    def on_refresh():
        return rh.table(ctx)

    # The key box is emptied by the add's own output: the key is never sent back to the browser.
    add_btn.click(on_add, [name, url, key], [status, endpoints, picked, key], api_name="add_remote",
                  concurrency_limit=1, concurrency_id="remote-admin")
    list_btn.click(on_list, picked, [status, model], api_name="list_remote_models", concurrency_limit=2,
                   concurrency_id="remote-list")
    wire_load(ctx, load_btn, model, lambda m: m.strip() if isinstance(m, str) and m.strip() else None, on_load,
              [picked, model, timeout], [status], load_line, api_name="load_remote_model", concurrency_limit=1,
              concurrency_id="model-admin").then(on_refresh, None, [endpoints, picked], api_visibility="private")
    remove_btn.click(on_remove, picked, [status, endpoints, picked], api_name="remove_remote",
                     concurrency_limit=1, concurrency_id="remote-admin")
    return lambda app, tabs: tabs["models"].select(on_refresh, None, [endpoints, picked], api_visibility="private",
                                                   concurrency_limit=2, concurrency_id="library")
