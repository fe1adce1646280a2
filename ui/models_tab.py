"""Models tab: search the Hub, see whether each file fits this machine before downloading it,
download with progress, cancel and resume, and manage the local library. Wiring only; the logic is
in ``ui.models_handlers`` (Hub side) and ``ui.library_handlers`` (library side)."""
from __future__ import annotations

from typing import Callable, Optional

import gradio as gr

from services.download_job import stop_job
from ui import library_handlers as lib
from ui import models_handlers as h
from ui import cluster_panel, quality_panel, remote_panel
from ui.access import require_admin
from ui.context import AppContext
from ui.load_feedback import wire_load
from ui.quiet_dropdown import Dropdown

TAB_ID = "models"


def build(ctx: AppContext, services: Optional[h.ModelsServices] = None) -> Callable[[gr.Blocks, dict], None]:
    svc = services or h.default_services(ctx)
    view = gr.State(None)
    job = gr.State(None, delete_callback=stop_job)  # closing the page stops its download
    pending_delete = gr.State(None)

    gr.Markdown("### Find a model on the Hub\nEach file's fit on this machine comes from its header, read "
                "with a few range requests: nothing is downloaded until you press **Download**.")
    with gr.Row(equal_height=True):
        query = gr.Textbox(label="Search", placeholder="e.g. llama 8b instruct", elem_id="models-query", scale=4)
        fmt = gr.Radio(list(h.FORMATS), value=next(iter(h.FORMATS)), label="Format", elem_id="models-format",
                       scale=3)
        search_btn = gr.Button("Search", variant="primary", elem_id="models-search", scale=1)
    results = gr.HTML(elem_id="models-results")
    with gr.Row(equal_height=True):
        repo = Dropdown(label="Repository (owner/name)", allow_custom_value=True, elem_id="models-repo", scale=5)
        open_btn = gr.Button("Open", elem_id="models-open", scale=1)
    summary = gr.Markdown(elem_id="models-summary")
    fit = gr.HTML(elem_id="models-fit")
    with gr.Row(equal_height=True):
        choice = Dropdown(label="File to download (★ fits best)", elem_id="models-choice", scale=5)
        download_btn = gr.Button("Download", variant="primary", elem_id="models-download", scale=1)
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="models-cancel", scale=1)
    progress = gr.HTML(elem_id="models-progress")
    note = gr.Markdown(elem_id="models-note")
    cluster_panel.build(svc.hub, repo)

    # No absolute path here: the layout is in /config for every user (admins see paths with Show path).
    gr.Markdown("### Library\nModels in the `models` folder of FitChat's data folder (and the embedded one), "
                "planned for this machine. Works offline.")
    library = gr.HTML("<p>Select this tab to list the library.</p>", elem_id="models-library")
    with gr.Row(equal_height=True):
        lib_choice = Dropdown(label="Model", elem_id="library-choice", scale=4)
        load_btn = gr.Button("Load", variant="primary", elem_id="library-load", scale=1)
        reveal_btn = gr.Button("Show path", elem_id="library-reveal", scale=1)
        delete_btn = gr.Button("Delete…", variant="stop", elem_id="library-delete", scale=1)
        refresh_btn = gr.Button("Refresh", elem_id="library-refresh", scale=1)
    load_line = gr.Markdown(elem_id="library-load-feedback")
    path = gr.Textbox(label="Path on disk", interactive=False, elem_id="library-path")
    with gr.Row(visible=False, elem_id="library-confirm-row") as confirm_row:
        confirm_text = gr.Markdown(elem_id="library-confirm-text")
        confirm_btn = gr.Button("Yes, delete", variant="stop", elem_id="library-confirm")
        keep_btn = gr.Button("Keep", elem_id="library-keep")
    lib_status = gr.Markdown(elem_id="library-status")

    def on_search(text, fmt_label):
        return h.search(svc, text, fmt_label)

    def on_open(repo_text):
        yield from h.open_repo(ctx, svc, repo_text)

    def on_download(request: gr.Request, current_view, key, current_job):
        require_admin(ctx, request, "download models")
        yield from h.download(ctx, svc, current_view, key, current_job)

    def on_refresh():
        return lib.refresh(ctx)

    def on_load(request: gr.Request, name):
        require_admin(ctx, request, "load a model")
        return lib.load(ctx, name)

    def on_reveal(request: gr.Request, name):
        return lib.reveal(ctx, name, request)

    def on_ask_delete(request: gr.Request, name):
        require_admin(ctx, request, "delete models")
        return lib.ask_delete(ctx, name)

    def on_delete(request: gr.Request, name, pending):
        require_admin(ctx, request, "delete models")
        return lib.confirm_delete(ctx, name, pending)

    gr.on([search_btn.click, query.submit], on_search, [query, fmt], [results, repo], api_name="search_models",
          concurrency_limit=4, concurrency_id="hub")
    gr.on([open_btn.click, repo.select], on_open, repo, [fit, choice, summary, view], api_name="open_repo",
          concurrency_limit=4, concurrency_id="hub")
    download_btn.click(on_download, [view, choice, job], [progress, job, library, lib_choice], api_name="download",
                       concurrency_limit=4, concurrency_id="downloads")
    download_btn.click(lambda: "", None, note, api_visibility="private", queue=False)  # an old "Cancelling…" goes
    # Queued (their own groups, never waiting behind a download or a load) so that a refusal reaches
    # the page as a toast instead of an HTTP 500.
    cancel_btn.click(h.cancel, job, note, api_name="cancel_download", concurrency_id="quick", concurrency_limit=None)
    refresh_btn.click(on_refresh, None, [library, lib_choice], api_name="library", concurrency_limit=2,
                      concurrency_id="library")
    wire_load(ctx, load_btn, lib_choice, lambda name: name if isinstance(name, str) and name else None, on_load,
              [lib_choice], [lib_status], load_line, api_name="load_library_model", concurrency_limit=1,
              concurrency_id="model-admin").then(on_refresh, None, [library, lib_choice], api_visibility="private")
    reveal_btn.click(on_reveal, lib_choice, path, api_name="reveal_model", concurrency_id="quick",
                     concurrency_limit=None)
    delete_btn.click(on_ask_delete, lib_choice, [confirm_text, pending_delete, confirm_row], api_name="ask_delete",
                     concurrency_id="quick", concurrency_limit=None)
    confirm_btn.click(on_delete, [lib_choice, pending_delete],
                      [lib_status, library, lib_choice, pending_delete, confirm_row], api_name="delete_model",
                      concurrency_limit=1, concurrency_id="model-admin")
    keep_btn.click(lambda: lib.keep(ctx), None, [lib_status, pending_delete, confirm_row], api_visibility="private",
                   queue=False)
    wire_remote = remote_panel.build(ctx)
    wire_quality = quality_panel.build(ctx)

    def wire(app, tabs):
        tabs[TAB_ID].select(on_refresh, None, [library, lib_choice], api_visibility="private",
                            concurrency_limit=2, concurrency_id="library")
        wire_remote(app, tabs)
        wire_quality(app, tabs)

    return wire
