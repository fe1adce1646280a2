"""The conversation list beside the chat: New, search, open, Rename, Delete (asks first), export
as Markdown or JSON, import as a new conversation. Wiring only; logic in ui.conversation_handlers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui import conversation_handlers as ch
from ui.access import username
from ui.context import AppContext
from ui.uploads import local_files_only


@dataclass
class Panel:
    new_btn: Any
    search: Any
    listing: Any
    title: Any
    rename_btn: Any
    delete_btn: Any
    confirm_row: Any
    confirm_btn: Any
    cancel_btn: Any
    export_format: Any
    export_btn: Any
    export_file: Any
    import_btn: Any


def build() -> Panel:
    with gr.Column(scale=1, min_width=220, elem_id="conversations-panel"):
        new_btn = gr.Button("New chat", elem_id="new-chat", size="sm", variant="secondary")
        search = gr.Textbox(label="Search conversations", elem_id="conversation-search", lines=1, max_lines=1,
                            placeholder="Title or words in the chat")
        listing = gr.Radio(label="Conversations", choices=[], elem_id="conversations", container=True)
        title = gr.Textbox(label="Title", elem_id="conversation-title", lines=1, max_lines=1)
        with gr.Row():
            rename_btn = gr.Button("Rename", elem_id="rename-conversation", size="sm", min_width=60)
            delete_btn = gr.Button("Delete…", elem_id="delete-conversation", size="sm", min_width=60)
        with gr.Row(visible=False, elem_id="confirm-delete") as confirm_row:
            confirm_btn = gr.Button("Delete it", variant="stop", elem_id="confirm-delete-yes", size="sm", min_width=60)
            cancel_btn = gr.Button("Keep it", elem_id="confirm-delete-no", size="sm", min_width=60)
        with gr.Accordion("Export / import", open=False, elem_id="export-accordion"):
            export_format = gr.Radio(list(ch.EXPORT_FORMATS), value="Markdown", label="Export as",
                                     elem_id="export-format")
            export_btn = gr.Button("Export", elem_id="export", size="sm")
            export_file = gr.File(label="Chat export", visible=False, elem_id="export-file")
            import_btn = local_files_only(gr.UploadButton("Import (.json)", file_types=[".json"], elem_id="import",
                                                          size="sm"))
    return Panel(new_btn, search, listing, title, rename_btn, delete_btn, confirm_row, confirm_btn, cancel_btn,
                 export_format, export_btn, export_file, import_btn)


def wire(ctx: AppContext, p: Panel, chatbot, history, current, system_prompt) -> Any:
    """Register the panel's events; returns ``refresh`` (inputs, outputs, fn) for the chat's events."""
    opened = [chatbot, history, current, system_prompt, p.title]

    def refresh(request: gr.Request, query, cur):
        return ch.list_update(ctx, username(request), query, cur)

    def refresh_title(request: gr.Request, query, cur):
        cur = ch._current(cur)
        title = next((t for t, cid in ch.choices(ctx, username(request)) if cur and cid == cur[0]), "")
        return ch.list_update(ctx, username(request), query, cur), title

    def on_open(request: gr.Request, conversation_id):
        return ch.open_conversation(ctx, username(request), conversation_id)

    def on_new(request: gr.Request):
        return ch.new_conversation(ctx, request.session_hash)

    def on_rename(request: gr.Request, cur, title):
        return ch.rename(ctx, username(request), cur, title)

    def on_delete(request: gr.Request, cur):
        return ch.delete(ctx, username(request), request.session_hash, cur)

    def on_export(request: gr.Request, cur, hist, system, fmt, title):
        return gr.File(value=ch.export_file(ctx, username(request), cur, hist, system, fmt, title), visible=True)

    def on_import(request: gr.Request, upload):
        return ch.import_file(ctx, username(request), upload)

    listed = dict(fn=refresh, inputs=[p.search, current], outputs=p.listing, api_visibility="private")
    p.search.change(**listed, trigger_mode="always_last")
    p.listing.input(on_open, p.listing, opened, api_name="open_conversation").then(**listed)
    # Outside the queue: instant, and it cannot refuse anything (no toast needed).
    p.new_btn.click(on_new, None, opened, api_name="new_chat", queue=False).then(**listed)
    p.rename_btn.click(on_rename, [current, p.title], p.title, api_name="rename_conversation").then(**listed)
    p.title.submit(on_rename, [current, p.title], p.title, api_visibility="private").then(**listed)
    p.delete_btn.click(lambda: gr.Row(visible=True), None, p.confirm_row, api_visibility="private", queue=False)
    p.cancel_btn.click(lambda: gr.Row(visible=False), None, p.confirm_row, api_visibility="private", queue=False)
    p.confirm_btn.click(lambda: gr.Row(visible=False), None, p.confirm_row, api_visibility="private", queue=False)
    p.confirm_btn.click(on_delete, current, opened, api_name="delete_conversation").then(**listed)
    p.export_btn.click(on_export, [current, history, system_prompt, p.export_format, p.title], p.export_file,
                       api_name="export_chat")
    p.import_btn.upload(on_import, p.import_btn, opened, api_name="import_chat").then(**listed)
    return dict(fn=refresh_title, inputs=[p.search, current], outputs=[p.listing, p.title],
                api_visibility="private")
