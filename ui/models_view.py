"""HTML of the Models tab: search results, the fit table of a repo, the download progress bar and
the library. Every value from the Hub or the disk is escaped."""
from __future__ import annotations

import html
from typing import Mapping, Optional, Sequence

from core.hub_files import format_bytes
from core.hub_fit import FitRow
from core.plan import Plan
from core.transfer import TransferProgress, describe
from services.hub import RepoSummary
from services.library import LibraryItem
from ui.presets_handlers import BADGE_COLOURS

GIB = 1 << 30


def _table(head: Sequence[str], rows: list[str], elem_class: str = "fc-presets") -> str:
    cells = "".join(f"<th>{h}</th>" for h in head)
    return f'<table class="{elem_class}"><thead><tr>{cells}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _row(cells: Sequence[str], attrs: str = "") -> str:
    return f"<tr{attrs}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def badge(plan: Optional[Plan], problem: str = "") -> str:
    if plan is None:
        title = html.escape(problem or "no plan", quote=True)
        return f'<span class="fc-badge" style="background:#6b7280" title="{title}">Cannot plan</span>'
    return (f'<span class="fc-badge" data-fit="{plan.fit}" style="background:{BADGE_COLOURS[plan.fit]}">'
            f"{html.escape(plan.fit_label)}</span>")


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n else "–"


def _speed(plan: Plan) -> str:
    if not plan.tokens_per_s:
        return "–"
    return f"≤ {plan.tokens_per_s:.1f}" if plan.backend == "transformers" else f"{plan.tokens_per_s:.1f}"


def _plan_cells(plan: Optional[Plan], problem: str, best_ctx: int) -> list[str]:
    if plan is None:
        return [badge(None, problem), "–", "–", "–", "–", f"<small>{html.escape(problem)}</small>"]
    ctx = f"{best_ctx:,}" if best_ctx else "–"
    return [badge(plan), ctx, _gib(plan.vram_bytes), _gib(plan.ram_bytes), _speed(plan),
            f"<small>{html.escape('; '.join(plan.reasons))}</small>"]


def search_table(results: Sequence[RepoSummary]) -> str:
    if not results:
        return "<p>No repositories found.</p>"
    rows = [_row([f"<b>{html.escape(r.repo)}</b>", f"{r.downloads:,}", f"{r.likes:,}",
                  "gated" if r.gated else "", html.escape(r.updated)], f' data-repo="{html.escape(r.repo)}"')
            for r in results]
    return _table(("Repository", "Downloads", "Likes", "Access", "Updated"), rows)


def _quality(label: Optional[str]) -> str:
    return html.escape(label) if label else "–"


def fit_table(rows: Sequence[FitRow], best: Optional[str], pending: int = 0,
              quality: Optional[Mapping[str, str]] = None) -> str:
    """``quality``: file name -> the latest quality result of that file on disk."""
    out = []
    quality = quality or {}
    for r in rows:
        star = ' <span title="pre-selected: fits best">★</span>' if r.key == best else ""
        files = f"{r.n_files} files" if r.n_files > 1 else "1 file"
        measured = quality.get(r.label) or quality.get(r.key.rsplit("/", 1)[-1])
        out.append(_row([f"<b>{html.escape(r.label)}</b>{star}<br><small>{html.escape(r.quant or '?')} · "
                         f"{files}</small>", format_bytes(r.size), *_plan_cells(r.plan, r.problem, r.best_ctx)[:-1],
                         _quality(measured), _plan_cells(r.plan, r.problem, r.best_ctx)[-1]],
                        f' data-key="{html.escape(r.key)}"'))
    note = f"<p><i>Reading headers… {pending} left.</i></p>" if pending else ""
    head = ("Model / quantisation", "Download", "Fit on this machine", "Best context", "VRAM", "RAM", "tokens/s",
            "Quality", "Why")
    return note + _table(head, out)


def progress_html(p: Optional[TransferProgress], message: str = "") -> str:
    if p is None:
        return f"<p>{html.escape(message)}</p>" if message else ""
    share = 100 * (p.verified / max(1, p.total) if p.phase == "verifying" else p.fraction)
    colour = {"failed": "#b91c1c", "cancelled": "#6b7280", "done": "#15803d"}.get(p.phase, "#2563eb")
    bar = (f'<div style="background:#e5e7eb;border-radius:6px;height:14px;width:100%">'
           f'<div id="download-bar" data-phase="{p.phase}" style="background:{colour};height:14px;border-radius:6px;'
           f'width:{min(100.0, share):.1f}%"></div></div>')
    text = f"<p>{html.escape(describe(p))}</p>"
    extra = f"<p>{html.escape(message)}</p>" if message else ""
    return bar + text + extra


def library_table(items: Sequence[LibraryItem], quality: Optional[Mapping[str, str]] = None) -> str:
    """``quality``: model path -> its latest quality result (``app.py quality`` or the Quality check)."""
    if not items:
        return "<p>No models on disk yet.</p>"
    rows = []
    quality = quality or {}
    for item in items:
        e = item.entry
        kind = "safetensors" if e.backend == "transformers" else "GGUF"
        origin = html.escape(item.repo) if item.repo else html.escape(e.source)
        cells = _plan_cells(item.plan, item.problem, item.best_ctx)
        rows.append(_row([f"<b>{html.escape(e.name)}</b><br><small>{origin}</small>", kind,
                          html.escape(item.quant or "?"), format_bytes(e.size_bytes),
                          html.escape(item.last_used or "never"), *cells[:-1], _quality(quality.get(e.path)),
                          cells[-1]],
                         f' data-model="{html.escape(e.name)}"'))
    head = ("Model", "Format", "Quant", "Size", "Last used", "Fit", "Best context", "VRAM", "RAM", "tokens/s",
            "Quality", "Why")
    return _table(head, rows)
