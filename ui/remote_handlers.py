"""Models tab, remote engines: add an OpenAI-compatible endpoint, list its models, load one, remove
it. Testable without a browser. Every handler checks the admin role itself; the API key goes in once and never comes back out (not in any
output, message or log)."""
from __future__ import annotations

import html
import time
from typing import Any, Optional

import gradio as gr
from pydantic import ValidationError

from backends.base import BackendError, LoadSpec
from backends.remote_engine import RemoteBackend
from core.options import RemoteLoadOptions
from core.remote import RemoteConfigError, RemoteEndpoint, validate_name
from ui.access import require_admin
from ui.context import AppContext
from ui.quiet_dropdown import Dropdown
from ui.status import format_status

MAX_MODEL_ID = 200


def _store(ctx: AppContext):
    if ctx.remotes is None:
        raise gr.Error("Remote engines are not available in this app.")
    return ctx.remotes


def _endpoint(ctx: AppContext, name: Any) -> RemoteEndpoint:
    try:
        endpoint = _store(ctx).get(validate_name(name))
    except RemoteConfigError as exc:
        raise gr.Error(str(exc)) from None
    if endpoint is None:
        raise gr.Error(f"There is no remote endpoint named {str(name)[:40]!r}; add it first.")
    return endpoint


def _loaded_endpoint(ctx: AppContext) -> Optional[str]:
    state = ctx.manager.state()
    if state.spec is None or state.spec.backend != "remote" or state.status not in ("ready", "loading"):
        return None
    return state.spec.options.endpoint


def table(ctx: AppContext) -> tuple[str, Any]:
    """The endpoints (name, address, whether a key is set) and the picker of their names."""
    try:
        endpoints = _store(ctx).list()
    except RemoteConfigError as exc:
        return f"<p>{html.escape(str(exc))}</p>", Dropdown(choices=[], value=None)
    if not endpoints:
        return "<p>No remote engines yet.</p>", Dropdown(choices=[], value=None)
    loaded = _loaded_endpoint(ctx)
    rows = "".join(
        f"<tr><td>{html.escape(e['name'])}</td><td><code>{html.escape(e['base_url'])}</code></td>"
        f"<td>{'set' if e['has_key'] else 'none'}</td><td>{'in use' if e['name'] == loaded else ''}</td></tr>"
        for e in endpoints)
    head = "<tr><th>Name</th><th>Address</th><th>API key</th><th></th></tr>"
    names = [e["name"] for e in endpoints]
    return (f'<table class="fc-presets" id="remote-table-body"><thead>{head}</thead><tbody>{rows}</tbody></table>',
            Dropdown(choices=names, value=names[-1]))


def add(ctx: AppContext, request: Any, name: Any, url: Any, key: Any) -> tuple[str, str, Any, str]:
    """Store an endpoint. Returns (status, table, picker, the key box emptied)."""
    require_admin(ctx, request, "add remote engines")
    try:
        endpoint = _store(ctx).add(name, url, key if isinstance(key, str) and key.strip() else None)
    except RemoteConfigError as exc:
        raise gr.Error(str(exc)) from None
    body, _ = table(ctx)
    picker = Dropdown(choices=_store(ctx).names(), value=endpoint.name)
    return (f"Added **{html.escape(endpoint.name)}** ({html.escape(endpoint.base_url)}). Press **List models**.",
            body, picker, "")


def list_models(ctx: AppContext, request: Any, name: Any) -> tuple[str, Any]:
    require_admin(ctx, request, "list a remote engine's models")
    endpoint = _endpoint(ctx, name)
    backend = RemoteBackend(_store(ctx).get)
    try:
        models = backend.list_models(endpoint)
    except BackendError as exc:
        raise gr.Error(str(exc)) from None
    finally:
        backend.close()
    if not models:
        return f"{html.escape(endpoint.name)} serves no models.", Dropdown(choices=[], value=None)
    return (f"{html.escape(endpoint.name)} serves {len(models)} model(s).",
            Dropdown(choices=list(models), value=models[0]))


TIMEOUT_FIELD = RemoteLoadOptions.model_fields["timeout_s"]
TIMEOUT_RANGE = tuple(next(getattr(m, a) for m in TIMEOUT_FIELD.metadata if hasattr(m, a)) for a in ("ge", "le"))


def _options(endpoint: str, timeout_s: Any) -> RemoteLoadOptions:
    """The load's options; the reply timeout is checked by RemoteLoadOptions itself (one declaration)."""
    if timeout_s is None or timeout_s == "":
        return RemoteLoadOptions(endpoint=endpoint)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float, str)):
        raise gr.Error("The reply timeout is a number of seconds.")
    try:
        return RemoteLoadOptions(endpoint=endpoint, timeout_s=timeout_s)
    except ValidationError:
        low, high = TIMEOUT_RANGE
        raise gr.Error(f"The reply timeout must be a number of seconds from {low:g} to {high:g}.") from None


def load(ctx: AppContext, request: Any, name: Any, model: Any, timeout_s: Any = None) -> str:
    require_admin(ctx, request, "load a model")
    endpoint = _endpoint(ctx, name)
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_ID:
        raise gr.Error("Pick one of the endpoint's models (press List models).")
    model = model.strip()
    options = _options(endpoint.name, timeout_s)
    try:
        ctx.manager.load(LoadSpec(model, options, backend="remote", display_name=model))
    except BackendError as exc:
        gr.Warning(str(exc))
    return format_status(ctx.manager.state())


def remove(ctx: AppContext, request: Any, name: Any) -> tuple[str, str, Any]:
    require_admin(ctx, request, "remove remote engines")
    endpoint = _endpoint(ctx, name)
    note = ""
    if _loaded_endpoint(ctx) == endpoint.name:
        try:
            ctx.manager.unload()
        except BackendError as exc:
            raise gr.Error(f"{endpoint.name} serves the chat now: {exc}") from None
        note = " Its model was unloaded."
    try:
        _store(ctx).remove(endpoint.name)
    except (RemoteConfigError, OSError) as exc:
        raise gr.Error(str(exc)) from None
    return (f"Removed **{html.escape(endpoint.name)}**.{note}", *table(ctx))


def resources_card(info, health) -> str:
    """The Resources tab's card for a remote model: its measured speed and errors (its placement is
    the remote server's business)."""
    endpoint = html.escape(info.path.split(":", 1)[0])
    lines = [f"**{html.escape(info.name)}** runs on the remote engine **{endpoint}**: no local GPU or worker "
             "memory; speed is measured here, on each reply."]
    if health is None:
        return lines[0]
    stats = health.last_stats
    lines.append(f"Replies: {health.replies} · errors: {health.errors}")
    if stats is not None:
        speed = "n/a" if stats.measured_tokens_per_s is None else f"{stats.measured_tokens_per_s:.1f}"
        lines.append(f"Last reply: {stats.completion_tokens} tokens · {speed} tok/s · time to first token "
                     f"{stats.ttft_s * 1000:.0f} ms")
    if health.last_error:
        when = time.strftime("%H:%M:%S", time.localtime(health.last_error_at)) if health.last_error_at else ""
        lines.append(f"Last error ({when}): {html.escape(health.last_error)}")
    return "\n\n".join(lines)
