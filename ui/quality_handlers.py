"""Quality check in the Models tab: measure the loaded model's perplexity on the shipped text
(optionally against a reference from the library), with a progress bar and Stop; and the latest
result of each model for the Library, Presets and fit tables. Admins only: a run holds the shared
model, and a reference is loaded in its place for a while."""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr

from backends.base import LoadSpec
from core.model_catalog import UnknownModelError
from core.options import LoadOptions, TransformersLoadOptions
from core.quality import QualityOptions, describe, quant_label
from services.quality import QualityJob, QualityStore, quality_labels
from ui.access import require_admin
from ui.context import AppContext
from ui.quiet_dropdown import Dropdown

NO_REFERENCE = "(no reference)"
POLL_S = 0.5


def store(ctx: AppContext) -> QualityStore:
    return QualityStore(ctx.settings.data_dir)


def labels_by_path(ctx: AppContext) -> dict[str, str]:
    return quality_labels(store(ctx), [e.path for e in ctx.catalog().entries])


def labels_by_file_name(ctx: AppContext) -> dict[str, str]:
    """For rows that name a file (the Hub's fit rows, presets): a downloaded file's result."""
    return {Path(path).name: label for path, label in labels_by_path(ctx).items()}


def reference_choices(ctx: AppContext) -> Any:
    return Dropdown(choices=[NO_REFERENCE, *ctx.catalog().names], value=NO_REFERENCE)


def _reference_spec(ctx: AppContext, name: Any) -> Optional[LoadSpec]:
    if name in (None, "", NO_REFERENCE):
        return None
    try:
        entry = ctx.catalog().get(name)
    except UnknownModelError as exc:
        raise gr.Error(str(exc)) from None
    options = TransformersLoadOptions(quantization="bf16") if entry.backend == "transformers" else LoadOptions()
    return LoadSpec(entry.path, options, backend=entry.backend, display_name=entry.name)


def _options(windows: Any) -> QualityOptions:
    if windows in (None, "", 0):
        return QualityOptions()
    try:
        n = int(windows)
    except (TypeError, ValueError):
        raise gr.Error("Windows must be a whole number (empty = all).") from None
    if not 1 <= n <= 10000:
        raise gr.Error("Windows must be between 1 and 10000 (empty = all).")
    return QualityOptions(max_windows=n)


def progress_html(phase: str, done: int, total: int, stopping: bool = False) -> str:
    share = 100.0 * done / total if total else 0.0
    label = {"reference": "Reference", "model": "Model"}.get(phase, phase.capitalize())
    text = f"{label}: {done}/{total} windows" if total else f"{label}…"
    if stopping:
        text += " — stopping after this window"
    return (f'<div style="background:#e5e7eb;border-radius:6px;height:14px;width:100%">'
            f'<div id="quality-bar" data-phase="{html.escape(phase)}" data-done="{done}" data-total="{total}" '
            f'style="background:#2563eb;height:14px;border-radius:6px;width:{share:.1f}%"></div></div>'
            f"<p>{html.escape(text)}</p>")


def run(ctx: AppContext, request: gr.Request, ref_name: Any, windows: Any) -> Iterator[tuple[str, str, Any]]:
    """Yields (progress, result, job) until the run ends."""
    require_admin(ctx, request, "run the quality check")
    state = ctx.manager.state()
    if state.status != "ready" or state.spec is None:
        raise gr.Error("Load a model first: the quality check measures the loaded model.")
    opts = _options(windows)
    ref_spec = _reference_spec(ctx, ref_name)
    job = QualityJob(ctx.manager, state.spec, store(ctx), opts, ref_spec).start()
    yield progress_html("starting", 0, 0), "", job
    while not job.done.wait(POLL_S):
        yield progress_html(*job.progress, stopping=job.cancel.is_set()), "", job
    if job.error:
        gr.Warning(job.error)
        yield "", f"**Quality check failed:** {html.escape(job.error)}", None
        return
    out = job.outcome
    lines = []
    if out.reference is not None:
        lines.append(describe(out.reference, quant_label(out.reference.model)))
    lines.append(describe(out.result, quant_label(out.result.model)))
    r = out.result
    lines.append(f"{r.scored_tokens:,} tokens scored in {r.windows_done} windows of {r.options['window']} "
                 f"({r.seconds:.1f} s); " + ("kept with the model." if out.stored else "not kept: the run is incomplete."))
    yield progress_html("model", r.windows_done, r.windows_total), "\n\n".join(f"- {html.escape(x)}" for x in lines), None


def stop(job: Any) -> str:
    if isinstance(job, QualityJob) and not job.done.is_set():
        job.cancel.set()
        return "Stopping after the current window…"
    return ""


def stop_job(job: Any) -> None:
    """A closed page stops its quality run."""
    if isinstance(job, QualityJob):
        job.cancel.set()
