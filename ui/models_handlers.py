"""Models tab handlers, Hub side: search, open a repo (fit of every file before downloading), download
with progress and cancel. Plain functions of (context, services, inputs); every input is checked
here, on the server: a client can bypass the dropdowns."""
from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

import gradio as gr

from core.hardware import Hardware
from core.hub_files import HubFile, HubNameError, check_query, check_repo_id, format_bytes, group_gguf
from core.hub_fit import FitRow, best_row
from core.planner import Calibration
from services.download_job import DownloadJob
from services.downloads import Downloader, DownloadRequest
from services.hub import HubClient, HubError, RepoListing
from services.remote_fit import gguf_rows, transformers_fit
from ui import library_handlers
from ui.context import AppContext
from ui.models_view import fit_table, progress_html, search_table
from ui.quiet_dropdown import Dropdown

FORMATS = {"GGUF (llama.cpp)": "gguf", "safetensors (transformers)": "safetensors"}
POLL_S = 0.5


@dataclass
class ModelsServices:
    """The Hub client and the downloader the tab uses (tests pass ones for a local Hub)."""
    hub: HubClient
    downloader: Downloader


def default_services(ctx: AppContext) -> ModelsServices:
    hub = HubClient()
    return ModelsServices(hub, Downloader(ctx.settings.models_dir, hub))


@dataclass(frozen=True)
class RepoView:
    """An opened repo, kept per browser session: downloads take their files from here only."""
    listing: RepoListing
    kind: str                                   # "gguf" | "transformers"
    rows: tuple[FitRow, ...] = ()
    files: dict[str, tuple[HubFile, ...]] = field(default_factory=dict)  # choice key -> files
    best: Optional[str] = None


def machine(ctx: AppContext) -> tuple[Optional[Hardware], Calibration]:
    """This machine and its calibration, from the planning object shared with the model manager."""
    if ctx.planning is None:
        return None, Calibration()
    hw = ctx.planning.machine()
    return hw, ctx.planning.calibration(hw)


def search(svc: ModelsServices, query: Any, fmt_label: Any) -> tuple[str, Any]:
    try:
        text = check_query(query)
    except HubNameError as exc:
        raise gr.Error(str(exc)) from None
    if fmt_label not in FORMATS:
        raise gr.Error("Pick GGUF or safetensors.")
    try:
        results = svc.hub.search(text, FORMATS[fmt_label])
    except HubError as exc:
        raise gr.Error(str(exc)) from None
    repos = [r.repo for r in results]
    return search_table(results), Dropdown(choices=repos, value=repos[0] if repos else None)


def _summary(view: RepoView, notes: list[str]) -> str:
    listing = view.listing
    read = sum(r.header_bytes for r in view.rows)
    lines = [f"**{html.escape(listing.repo)}** at `{listing.revision[:12]}` · {len(view.rows)} choice(s) · "
             f"headers read: {format_bytes(read)} (no weights)" + (" · gated" if listing.gated else "")]
    if listing.refused:
        lines.append("**Refused file names** (never downloaded): " +
                     "; ".join(html.escape(r) for r in listing.refused[:10]))
    lines += [f"- {html.escape(n)}" for n in notes[:20]]
    return "\n\n".join(lines)


def _outputs(view: RepoView, notes: list[str], pending: int = 0, quality: Optional[dict] = None):
    choices = [(f"{r.label} ({format_bytes(r.size)})", r.key) for r in view.rows if r.key in view.files]
    value = view.best if view.best in view.files else (choices[0][1] if choices else None)
    return (fit_table(view.rows, view.best, pending, quality), Dropdown(choices=choices, value=value),
            _summary(view, notes), view)


def open_repo(ctx: AppContext, svc: ModelsServices, repo_text: Any) -> Iterator[tuple]:
    """Yield the fit table as each file's header arrives; the best-fitting choice is pre-selected."""
    try:
        listing = svc.hub.listing(check_repo_id(repo_text))
    except (HubNameError, HubError) as exc:
        raise gr.Error(str(exc)) from None
    hw, cal = machine(ctx)
    from ui.quality_handlers import labels_by_file_name

    quality = labels_by_file_name(ctx)  # files of this repo already on disk and measured
    if listing.kind == "gguf":
        yield from _open_gguf(svc, listing, hw, cal, quality)
    elif listing.kind == "transformers":
        yield _open_transformers(svc, listing, hw, cal, quality)
    else:
        raise gr.Error(f"{listing.repo} has no GGUF or safetensors model files.")


def _open_gguf(svc: ModelsServices, listing: RepoListing, hw, cal, quality: Optional[dict] = None) -> Iterator[tuple]:
    models, notes = group_gguf(listing.files)
    if not models:
        raise gr.Error(f"{listing.repo} has no usable GGUF model files. " + " ".join(notes[:3]))
    view = RepoView(listing, "gguf", files={m.key: m.files for m in models})
    yield _outputs(view, notes, pending=len(models), quality=quality)
    rows: dict[str, FitRow] = {}
    for row in gguf_rows(svc.hub, listing, models, hw, cal):
        rows[row.key] = row
        view = replace(view, rows=tuple(rows[m.key] for m in models if m.key in rows))
        if len(rows) < len(models):
            yield _outputs(view, notes, pending=len(models) - len(rows), quality=quality)
    best = best_row(view.rows)
    yield _outputs(replace(view, best=best), notes, quality=quality)


def _open_transformers(svc: ModelsServices, listing: RepoListing, hw, cal, quality: Optional[dict] = None) -> tuple:
    if hw is None:
        raise gr.Error("Hardware probing is not available: cannot plan.")
    try:
        rows, selection, repo = transformers_fit(svc.hub, listing, hw, cal)
    except HubError as exc:
        raise gr.Error(str(exc)) from None
    files = {r.key: selection.files for r in rows if r.plan is not None}
    best = best_row(rows)
    notes = [f"{len(selection.weights)} safetensors file(s) plus config and tokenizer; nothing else is fetched",
             "checkpoint: " + ("GPTQ" if repo.quant_method == "gptq" else repo.quant_method or "unquantised "
                               "(loads as NF4, 8-bit or bf16)")]
    return _outputs(RepoView(listing, "transformers", tuple(rows), files, best), notes, quality=quality)


def download(ctx: AppContext, svc: ModelsServices, view: Any, choice: Any, job: Any) -> Iterator[tuple]:
    """Yield (progress, job, library table, library choice) until the download ends."""
    if isinstance(job, DownloadJob) and not job.done:
        raise gr.Error("A download is already running in this page: cancel it or wait for it.")
    if not isinstance(view, RepoView):
        raise gr.Error("Open a repository first.")
    files = view.files.get(choice) if isinstance(choice, str) else None
    if not files:
        raise gr.Error("Pick a file from the list.")
    request = DownloadRequest(view.listing.repo, view.listing.revision, files, view.kind)
    job = DownloadJob(svc.downloader, request).start()
    skip = gr.skip()
    try:
        yield progress_html(None, "Starting…"), job, skip, skip
        while not job.wait(POLL_S):
            yield progress_html(job.progress), job, skip, skip
    finally:
        if not job.done:
            job.stop()  # the page went away: stop; the partial file stays for a resume
    yield (*_final(job), *library_handlers.refresh(ctx, str(job.result.path) if job.result else None))


def _final(job: DownloadJob) -> tuple[str, DownloadJob]:
    p = job.progress
    if job.result is not None:
        r = job.result
        speed = r.fetched / r.seconds if r.seconds > 0 else 0
        message = (f"Installed {r.path.name}: every file verified. Fetched {format_bytes(r.fetched)} in "
                   f"{r.seconds:.1f} s ({format_bytes(speed)}/s)"
                   + (f"; {format_bytes(r.resumed)} were already on disk from an earlier attempt." if r.resumed
                      else ".") + " It is in the library below.")
        return progress_html(replace(p, phase="done") if p else None, message), job
    phase = "cancelled" if job.cancelled else "failed"
    return progress_html(replace(p, phase=phase) if p else None, job.error), job


def cancel(job: Any) -> str:
    if isinstance(job, DownloadJob) and not job.done:
        job.stop()
        return "Cancelling… the part already downloaded is kept."
    return "No download is running."
