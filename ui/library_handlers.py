"""Models tab handlers, library side: list what is on disk with its plan, load a model with its
planned settings, show its path, delete it after a confirmation. Names come from the catalog (the
allow-list); nothing a client sends becomes a path. Works offline."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from backends.base import BackendError, LoadSpec
from core.hub_files import format_bytes
from core.model_catalog import ModelEntry, UnknownModelError
from core.load_plan import applied_options
from core.planner import Calibration
from services.library import DeleteError, delete_model, library_items, plan_local, read_usage, record_use
from ui.access import require_admin
from ui.context import AppContext
from ui.models_view import library_table
from ui.quiet_dropdown import Dropdown
from ui.status import format_status


def _entry(ctx: AppContext, name: Any) -> ModelEntry:
    try:
        return ctx.catalog().get(name)
    except UnknownModelError as exc:
        raise gr.Error(str(exc)) from None


def _loaded_path(ctx: AppContext) -> Optional[str]:
    state = ctx.manager.state()
    return state.spec.model_path if state.spec is not None and state.status in ("ready", "loading") else None


def refresh(ctx: AppContext, select_path: Optional[str] = None) -> tuple[str, Any]:
    """The library table and the list of its names (``select_path`` chosen). The model loaded now
    counts as used now."""
    loaded = _loaded_path(ctx)
    catalog = ctx.catalog()
    if loaded is not None and catalog.find_path(loaded) is not None:
        record_use(ctx.settings.data_dir, loaded)
    hw, cal = _machine(ctx)
    items = library_items(catalog, hw, read_usage(ctx.settings.data_dir), cal, _facts(ctx))
    names = catalog.names
    chosen = catalog.find_path(select_path) if select_path else None
    value = chosen.name if chosen else (names[0] if names else None)
    from ui.quality_handlers import labels_by_path

    return library_table(items, labels_by_path(ctx)), Dropdown(choices=names, value=value)


def _machine(ctx: AppContext):
    """This machine and its calibration, from the planning object shared with the model manager."""
    if ctx.planning is None:
        return None, Calibration()
    hw = ctx.planning.machine()
    return hw, ctx.planning.calibration(hw)


def _facts(ctx: AppContext):
    return ctx.planning.facts if ctx.planning is not None else None


def load(ctx: AppContext, name: Any) -> str:
    """Load with exactly the plan the library shows for this machine (the manager checks it again)."""
    entry = _entry(ctx, name)
    hw, cal = _machine(ctx)
    row = plan_local(entry, hw, cal, _facts(ctx))
    plan = row.plan
    if plan is None:
        raise gr.Error(f"{entry.name}: {row.problem}")
    if plan.fit == "no_fit":
        raise gr.Error(f"{entry.name} does not fit on this machine: " + "; ".join(plan.reasons))
    options = applied_options(plan)
    try:
        ctx.manager.load(LoadSpec(entry.path, options, backend=entry.backend, display_name=entry.name))
        record_use(ctx.settings.data_dir, entry.path)
    except BackendError as exc:
        gr.Warning(str(exc))
    return format_status(ctx.manager.state())


def reveal(ctx: AppContext, name: Any, request: Any = None) -> str:
    """The model's absolute path: admins only, checked here (not only where the button is wired),
    because a path tells a guest the account name and the folder layout."""
    require_admin(ctx, request, "see where models are stored")
    entry = _entry(ctx, name)
    return entry.path


def ask_delete(ctx: AppContext, name: Any) -> tuple[str, Any, Any]:
    """First step: say what would be deleted; the second step must name the same model."""
    entry = _entry(ctx, name)
    if entry.source != "library":
        raise gr.Error(f"{entry.name} is not in the models folder; FitChat deletes only models it lists there.")
    what = "the folder" if entry.backend == "transformers" else "the file(s)"
    text = (f"Delete **{html.escape(entry.name)}** ({format_bytes(entry.size_bytes)})? This removes {what} "
            f"from `{html.escape(str(Path(entry.path).parent if entry.backend != 'transformers' else entry.path))}`.")
    return text, entry.name, gr.Row(visible=True)


def confirm_delete(ctx: AppContext, name: Any, pending: Any) -> tuple[str, str, Any, None, Any]:
    if not isinstance(pending, str) or pending != name:
        raise gr.Error("Press Delete… for this model first, then confirm.")
    entry = _entry(ctx, name)
    try:
        message = delete_model(ctx.settings.models_dir, entry, _loaded_path(ctx))
    except (DeleteError, OSError) as exc:
        raise gr.Error(str(exc)) from None
    return (message, *refresh(ctx), None, gr.Row(visible=False))


def keep(ctx: AppContext) -> tuple[str, None, Any]:
    return "Kept.", None, gr.Row(visible=False)
