"""Chat tab: the conversation list, streaming chat, stop, regenerate, edit-and-resend, system prompt,
sampling, and the model bar (load/unload). Wiring only; the logic is in ``ui.chat_handlers`` and
``ui.conversation_handlers``."""
from __future__ import annotations

import gradio as gr

from core.options import MAX_PARALLEL, LoadOptions, SamplingOptions
from ui import chat_handlers as h, conversation_handlers as ch, conversations_panel, share_panel
from ui.access import require_admin, username
from ui.context import AppContext
from ui.load_feedback import wire_load
from ui.option_widgets import build_widgets, check_on_enter, widget_values
from ui.quiet_dropdown import Dropdown
from ui.status import format_status, status_dict

GENERATION = "generation"  # the reply events' concurrency group


def build(ctx: AppContext):
    history = gr.State(())
    conv = gr.State(None)      # (conversation id, revision) once written; see ui.conversation_handlers
    taken = gr.State("")       # the message taken from the box, handed to the reply
    pending_edit = gr.State(None)  # an edit of an earlier message, until the user says what to drop
    with gr.Row(equal_height=False):
        panel = conversations_panel.build()
        with gr.Column(scale=3):
            status = gr.Markdown(lambda: format_status(ctx.manager.state()), elem_id="model-status")
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height=520, editable="user",
                                 buttons=["copy"], placeholder="Ask anything. Replies stream here.")
            with gr.Row(visible=False, elem_id="confirm-edit") as edit_row:
                edit_note = gr.Markdown(elem_id="confirm-edit-note")
                edit_yes = gr.Button("Drop them and resend", variant="stop", elem_id="confirm-edit-yes", size="sm",
                                     min_width=80)
                edit_no = gr.Button("Keep them", elem_id="confirm-edit-no", size="sm", min_width=80)
            with gr.Row():
                message = gr.Textbox(elem_id="message", label="Message", show_label=False,
                                     placeholder="Message (Enter to send)", scale=8, lines=1, max_lines=8,
                                     autofocus=True)
                send_btn = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=80)
            with gr.Row():
                prev_btn = gr.Button("◀ Earlier reply", elem_id="reply-prev", size="sm", scale=1)
                regen_btn = gr.Button("Regenerate", elem_id="regenerate", size="sm", scale=2)
                next_btn = gr.Button("Later reply ▶", elem_id="reply-next", size="sm", scale=1)
                continue_btn = gr.Button("Continue", elem_id="continue", size="sm", scale=1)
            # The API's /send: the message is the text sent (the UI takes it from the box first).
            send_api = gr.Button("send", visible=False, elem_id="send-api")
            # The API's /edit: message index and new text; it runs at once (the caller has decided).
            edit_api = gr.Button("edit", visible=False, elem_id="edit-api")
            edit_index = gr.Number(visible=False, precision=0, label="Message index", elem_id="edit-api-index")
            edit_text = gr.Textbox(visible=False, label="New text", elem_id="edit-api-text")
        with gr.Column(scale=1, min_width=300):
            with gr.Accordion("Model", open=False, elem_id="model-accordion"):
                catalog = ctx.catalog()
                current = ctx.manager.state().spec
                with gr.Row(equal_height=True):
                    # allow_custom_value: the catalog (rescanned on every load) is the allow-list,
                    # so files added after start-up can be loaded; unknown names are refused there.
                    model_choice = Dropdown(
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
                load_line = gr.Markdown(elem_id="load-feedback")
            system_prompt = gr.Textbox(label="System prompt", lines=3, elem_id="system-prompt",
                                       placeholder="Optional: how the assistant should behave")
            with gr.Accordion("Sampling", open=False, elem_id="sampling-accordion"):
                sampling_widgets = build_widgets(SamplingOptions, elem_prefix="sampling-")
            share_panel.build(ctx)

    check_on_enter(LoadOptions, load_widgets, "load options")
    check_on_enter(SamplingOptions, sampling_widgets, "sampling options")
    sampling_inputs = [sampling_widgets[name] for name in h.SAMPLING_FIELDS]
    stream_outputs = [chatbot, history, conv]  # never the message box: a draft typed meanwhile stays

    def saving(request: gr.Request, cur, system, updates):
        yield from ch.persist(ctx, username(request), cur, system, updates)

    def on_take(request: gr.Request, text):
        return h.take_message(ctx, request.session_hash, text)

    def on_reply(request: gr.Request, text, hist, cur, system, *sampling):
        if text:  # "" when the take was refused (the toast said why)
            yield from saving(request, cur, system, h.send(ctx, request.session_hash, text, hist, system, sampling))

    def on_send(request: gr.Request, text, hist, cur, system, *sampling):
        # API clients (gradio_client) see (chat, message box) as before; no browser triggers this.
        for update in saving(request, cur, system, h.send(ctx, request.session_hash, text, hist, system, sampling)):
            yield (*update, "")

    def on_regenerate(request: gr.Request, hist, cur, system, *sampling):
        yield from saving(request, cur, system, h.regenerate(ctx, request.session_hash, hist, system, sampling))

    def on_continue(request: gr.Request, hist, cur, system, *sampling):
        yield from saving(request, cur, system, h.continue_reply(ctx, request.session_hash, hist, system, sampling))

    def on_edit_ask(evt: gr.EditData, hist):
        """An edit drops every later turn: with later turns the tab asks first and shows the chat
        as it was (the browser already shows the edited text)."""
        try:
            pending, later = h.ask_edit(hist, evt.index, evt.value)
        except gr.Error as exc:
            gr.Warning(exc.message)
            return None, gr.Row(visible=False), "", h.to_display(h._history(hist))
        if not later:
            return pending, gr.Row(visible=False), "", gr.skip()
        note = (f"Editing this message drops the {later} later message{'s' if later > 1 else ''} of this chat "
                "(the conversation before the edit is not kept). Drop them and resend?")
        return pending, gr.Row(visible=True), note, h.to_display(h._history(hist))

    def on_edit_run(request: gr.Request, pending, hist, cur, system, *sampling):
        if not h.edit_confirmed(pending):
            # One update that changes nothing: a step that yields nothing would empty the chat.
            yield gr.skip(), gr.skip(), gr.skip()
            return
        yield from saving(request, cur, system, h.run_edit(ctx, request.session_hash, pending, hist, system, sampling))

    def on_edit_api(request: gr.Request, index, text, hist, cur, system, *sampling):
        """gradio_client's /edit in one call: validated, later turns dropped, the reply streamed.
        The browser's edit asks first instead (``on_edit_ask``): its answer is per-session state."""
        yield from saving(request, cur, system, h.edit(ctx, request.session_hash, h.message_index(index), text,
                                                      hist, system, sampling))

    def on_flip(step):
        def flip(request: gr.Request, hist, cur, system):
            yield from saving(request, cur, system, iter([h.flip(hist, step)]))
        return flip

    def on_stop(request: gr.Request):
        h.stop(ctx, request.session_hash)

    def on_clear(request: gr.Request):
        return ch.new_conversation(ctx, request.session_hash)

    def on_restore(request: gr.Request):
        return ch.restore(ctx, username(request))

    def on_model_panel():
        """After a reload the Model panel shows what is loaded, not the start-up defaults."""
        spec = ctx.manager.state().spec
        if spec is None or not isinstance(spec.options, LoadOptions):
            return [gr.skip()] * (1 + len(h.LOAD_FIELDS))
        name = spec.display_name if spec.display_name in ctx.catalog().names else gr.skip()
        return [name, *widget_values(LoadOptions, spec.options, h.LOAD_FIELDS)]

    def on_load(request: gr.Request, name, *values):
        require_admin(ctx, request, "load a model")
        return h.load_model(ctx, name, values)

    def on_unload(request: gr.Request):
        require_admin(ctx, request, "unload the model")
        return h.unload_model(ctx)

    def on_rescan(selected):
        names = ctx.catalog().names
        return Dropdown(choices=names, value=selected if selected in names else (names[0] if names else None))

    def on_status():
        return format_status(ctx.manager.state())

    # Replies wait in the model manager's line, which shows each its place and refuses the one too
    # many; Gradio lets them all reach it: those generating (at most MAX_PARALLEL slots), those
    # waiting, and one to refuse.
    common = dict(concurrency_limit=ctx.manager.max_waiting + MAX_PARALLEL + 1, concurrency_id=GENERATION)
    refresh = conversations_panel.wire(ctx, panel, chatbot, history, conv, system_prompt)
    chat_inputs = [history, conv, system_prompt, *sampling_inputs]
    # Every Enter reaches the server ("multiple"): one sent during a reply is refused with a toast
    # and stays in the box, instead of being dropped without a word by the browser.
    gr.on([message.submit, send_btn.click], on_take, message, [message, taken], trigger_mode="multiple",
          api_visibility="private").then(on_reply, [taken, *chat_inputs], stream_outputs, api_visibility="private",
                                         **common).then(**refresh).then(on_status, None, status,
                                                                        api_visibility="private")
    send_api.click(on_send, [message, *chat_inputs], [*stream_outputs, message], api_name="send",
                   **common).then(**refresh)
    gr.on([regen_btn.click, chatbot.retry], on_regenerate, chat_inputs, stream_outputs, api_name="regenerate",
          **common).then(**refresh).then(on_status, None, status, api_visibility="private")
    prev_btn.click(on_flip(-1), [history, conv, system_prompt], stream_outputs, api_name="earlier_reply",
                   concurrency_id="stop", concurrency_limit=None)
    next_btn.click(on_flip(1), [history, conv, system_prompt], stream_outputs, api_name="later_reply",
                   concurrency_id="stop", concurrency_limit=None)
    continue_btn.click(on_continue, chat_inputs, stream_outputs, api_name="continue_reply", **common).then(
        **refresh).then(on_status, None, status, api_visibility="private")
    asked = [pending_edit, edit_row, edit_note, chatbot]
    edit_run = dict(fn=on_edit_run, inputs=[pending_edit, *chat_inputs], outputs=stream_outputs, **common)
    chatbot.edit(on_edit_ask, history, asked, api_visibility="private", concurrency_id="stop",
                 concurrency_limit=None).then(api_visibility="private", **edit_run).then(**refresh).then(
        on_status, None, status, api_visibility="private")
    edit_api.click(on_edit_api, [edit_index, edit_text, *chat_inputs], stream_outputs, api_name="edit",
                   **common).then(**refresh)
    edit_yes.click(lambda p: (h.confirm_edit(p), gr.Row(visible=False)), pending_edit, [pending_edit, edit_row],
                   api_visibility="private", concurrency_id="stop", concurrency_limit=None).then(
        api_visibility="private", **edit_run).then(**refresh).then(on_status, None, status, api_visibility="private")
    edit_no.click(lambda hist: (None, gr.Row(visible=False), h.to_display(h._history(hist))), history,
                  [pending_edit, edit_row, chatbot], api_visibility="private", concurrency_id="stop",
                  concurrency_limit=None)
    # Stop refuses nothing, so it runs outside the queue: the fastest path while a reply streams.
    stop_btn.click(on_stop, None, None, api_name="stop", queue=False)
    # The chat's trash icon means what New chat means: an empty conversation, the old one kept.
    chatbot.clear(on_clear, None, [chatbot, history, conv, system_prompt, panel.title],
                  api_visibility="private", concurrency_id="stop", concurrency_limit=None).then(**refresh)
    rescan_btn.click(on_rescan, model_choice, model_choice, api_visibility="private", queue=False)
    unload_btn.click(on_unload, None, status, api_name="unload_model",
                     concurrency_limit=1, concurrency_id="model-admin")

    def model_status() -> dict:
        """The model's state: status (empty/loading/ready/failed/crashed), name, context, replies waiting, error."""
        return status_dict(ctx.manager.state(), ctx.manager.queue_depth())

    gr.api(model_status, api_name="model_status", queue=False)

    # While a model loads in the background the status line follows it, then the timer stops.
    timer = gr.Timer(1.0)

    def on_tick(request: gr.Request):
        state = ctx.manager.state()
        settled = state.status != "loading" and (state.status != "empty" or not ctx.settings.load_default_model)
        mine, running = ctx.loads.line(request.session_hash, state)  # this tab's load: its elapsed time
        return (mine if running else format_status(state)), gr.Timer(active=not settled or running)

    def on_started(request: gr.Request):
        return gr.Timer(active=True)  # the status line follows the load

    load_btn.click(on_started, None, timer, api_visibility="private", queue=False)
    wire_load(ctx, load_btn, model_choice, lambda name: name if isinstance(name, str) and name else None, on_load,
              [model_choice, *[load_widgets[n] for n in h.LOAD_FIELDS]], [status], load_line, also=[status],
              api_name="load_model", concurrency_limit=1, concurrency_id="model-admin")

    timer.tick(on_tick, None, [status, timer], api_visibility="private", queue=False)
    # Each user's latest conversation comes back when the page opens (the store keys it by login name).
    def wire(app, tabs):
        app.load(on_restore, None, [chatbot, history, conv, system_prompt, panel.title],
                 api_name="restore_chat").then(**refresh)
        # Outside the queue: the panel shows what is loaded before the user can type into it (a queued
        # event could arrive after the first keystrokes and replace them).
        app.load(on_model_panel, None, [model_choice, *[load_widgets[n] for n in h.LOAD_FIELDS]],
                 api_visibility="private", queue=False)
    return wire
