"""Chat tab: streaming chat, stop, regenerate, edit-and-resend, system prompt, sampling, and the
model bar (load/unload). Wiring only; the logic is in ``ui.chat_handlers``."""
from __future__ import annotations

import gradio as gr

from core.options import LoadOptions, SamplingOptions
from ui import chat_handlers as h, share_panel
from ui.access import require_admin, username
from ui.context import AppContext
from ui.option_widgets import build_widgets
from ui.status import format_status, status_dict
from ui.uploads import local_files_only

GENERATION = "generation"  # the reply events' concurrency group


def build(ctx: AppContext):
    history = gr.State(())
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            status = gr.Markdown(lambda: format_status(ctx.manager.state()), elem_id="model-status")
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height=520, editable="user",
                                 buttons=["copy"], placeholder="Ask anything. Replies stream here.")
            with gr.Row():
                message = gr.Textbox(elem_id="message", show_label=False, placeholder="Message (Enter to send)",
                                     scale=8, lines=1, max_lines=8, autofocus=True)
                send_btn = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=80)
            with gr.Row():
                regen_btn = gr.Button("Regenerate", elem_id="regenerate", size="sm")
                clear_btn = gr.Button("Clear", elem_id="clear", size="sm")
                export_btn = gr.Button("Export chat", elem_id="export", size="sm")
                import_btn = local_files_only(gr.UploadButton("Import chat", file_types=[".json"], elem_id="import",
                                                              size="sm"))
            export_file = gr.File(label="Chat export", visible=False, elem_id="export-file")
        with gr.Column(scale=1, min_width=300):
            with gr.Accordion("Model", open=False, elem_id="model-accordion"):
                catalog = ctx.catalog()
                current = ctx.manager.state().spec
                with gr.Row(equal_height=True):
                    # allow_custom_value: the catalog (rescanned on every load) is the allow-list,
                    # so files added after start-up can be loaded; unknown names are refused there.
                    model_choice = gr.Dropdown(
                        choices=catalog.names, label="Model on disk", elem_id="model-choice", scale=5,
                        allow_custom_value=True,
                        value=(current.display_name if current and current.display_name in catalog.names
                               else (catalog.names[0] if catalog.names else None)))
                    rescan_btn = gr.Button("Rescan", elem_id="rescan", size="sm", scale=1, min_width=60)
                load_widgets = build_widgets(LoadOptions, ctx.settings.load_options, only=h.LOAD_FIELDS,
                                             elem_prefix="load-")
                with gr.Row():
                    load_btn = gr.Button("Load", variant="primary", elem_id="load", size="sm")
                    unload_btn = gr.Button("Unload", elem_id="unload", size="sm")
            system_prompt = gr.Textbox(label="System prompt", lines=3, elem_id="system-prompt",
                                       placeholder="Optional: how the assistant should behave")
            with gr.Accordion("Sampling", open=False, elem_id="sampling-accordion"):
                sampling_widgets = build_widgets(SamplingOptions, elem_prefix="sampling-")
            share_panel.build(ctx)

    sampling_inputs = [sampling_widgets[name] for name in h.SAMPLING_FIELDS]
    stream_outputs = [chatbot, history, message]

    def persisted(request: gr.Request, updates, system):
        """Pass the updates through; keep the user's chat in the store once the reply ends
        (also when the client went away mid-reply: the partial reply is kept)."""
        last = None
        try:
            for last in updates:
                yield last
        finally:
            if last is not None:
                h.save_chat(ctx, username(request), last[1], system)

    def on_send(request: gr.Request, text, hist, system, *sampling):
        yield from persisted(request, h.send(ctx, request.session_hash, text, hist, system, sampling), system)

    def on_regenerate(request: gr.Request, hist, system, *sampling):
        yield from persisted(request, h.regenerate(ctx, request.session_hash, hist, system, sampling), system)

    def on_edit(request: gr.Request, evt: gr.EditData, hist, system, *sampling):
        yield from persisted(request, h.edit(ctx, request.session_hash, evt.index, evt.value, hist, system, sampling),
                             system)

    def on_stop(request: gr.Request):
        h.stop(ctx, request.session_hash)

    def on_clear(request: gr.Request, system):
        display, cleared = h.clear(ctx, request.session_hash)
        h.save_chat(ctx, username(request), cleared, system)
        return display, cleared

    def on_restore(request: gr.Request):
        return h.restore_chat(ctx, username(request))

    def on_export(hist, system):
        return gr.File(value=h.export_chat_file(hist, system), visible=True)

    def on_import(request: gr.Request, upload):
        display, hist, system = h.import_chat_file(upload)
        h.save_chat(ctx, username(request), hist, system)
        return display, hist, system

    def on_load(request: gr.Request, name, *values):
        require_admin(ctx, request, "load a model")
        return h.load_model(ctx, name, values)

    def on_unload(request: gr.Request):
        require_admin(ctx, request, "unload the model")
        return h.unload_model(ctx)

    def on_rescan(selected):
        names = ctx.catalog().names
        return gr.Dropdown(choices=names, value=selected if selected in names else (names[0] if names else None))

    def on_status():
        return format_status(ctx.manager.state())

    # Replies wait in the model manager's line, which shows each its place and refuses the one too
    # many; Gradio lets them all reach it: the one generating, those waiting, and one to refuse.
    common = dict(concurrency_limit=ctx.manager.max_waiting + 2, concurrency_id=GENERATION)
    gr.on([message.submit, send_btn.click], on_send, [message, history, system_prompt, *sampling_inputs],
          stream_outputs, api_name="send", **common).then(on_status, None, status, api_visibility="private")
    gr.on([regen_btn.click, chatbot.retry], on_regenerate, [history, system_prompt, *sampling_inputs],
          stream_outputs, api_name="regenerate", **common).then(on_status, None, status, api_visibility="private")
    chatbot.edit(on_edit, [history, system_prompt, *sampling_inputs], stream_outputs,
                 api_name="edit", **common).then(on_status, None, status, api_visibility="private")
    stop_btn.click(on_stop, None, None, api_name="stop", queue=False)
    clear_btn.click(on_clear, system_prompt, [chatbot, history], api_name="clear", queue=False)
    export_btn.click(on_export, [history, system_prompt], export_file, api_name="export_chat")
    import_btn.upload(on_import, import_btn, [chatbot, history, system_prompt], api_name="import_chat")
    load_btn.click(on_load, [model_choice, *[load_widgets[n] for n in h.LOAD_FIELDS]], status,
                   api_name="load_model", concurrency_limit=1, concurrency_id="model-admin")
    rescan_btn.click(on_rescan, model_choice, model_choice, api_visibility="private", queue=False)
    unload_btn.click(on_unload, None, status, api_name="unload_model",
                     concurrency_limit=1, concurrency_id="model-admin")

    def model_status() -> dict:
        """The model's state: status (empty/loading/ready/failed/crashed), name, context, replies waiting, error."""
        return status_dict(ctx.manager.state(), ctx.manager.queue_depth())

    gr.api(model_status, api_name="model_status", queue=False)

    # While a model loads in the background the status line follows it, then the timer stops.
    timer = gr.Timer(1.0)

    def on_tick():
        state = ctx.manager.state()
        settled = state.status != "loading" and (state.status != "empty" or not ctx.settings.load_default_model)
        return format_status(state), gr.Timer(active=not settled)

    timer.tick(on_tick, None, [status, timer], api_visibility="private", queue=False)
    # Each user's last chat comes back when the page opens (the store keys it by login name).
    return lambda app, tabs: app.load(on_restore, None, [chatbot, history, system_prompt],
                                      api_name="restore_chat")
