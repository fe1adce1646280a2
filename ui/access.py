"""Who may do what. Checked inside each handler (the UI hiding a button is not a control)."""
from __future__ import annotations

from typing import Optional

import gradio as gr

from ui.context import AppContext


def username(request: Optional[gr.Request]) -> Optional[str]:
    """The login name. Serving the network without logins, a per-browser id instead (set by
    ``cli.browser_id`` only in that mode), so each browser keeps its own chats."""
    if request is None:
        return None
    name = getattr(request, "username", None)
    if name:
        return name
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-fitchat-browser") or None


def require_admin(ctx: AppContext, request: Optional[gr.Request], action: str) -> None:
    user = username(request)
    if not ctx.settings.is_admin(user):
        # One log line, not a traceback per refusal (a prober made 252 of them in one run).
        print(f"fitchat: refused: {str(user or 'nobody')[:64]!r} may not {action} (admins only)", flush=True)
        raise gr.Error(f"Only an admin can {action}; you are logged in as {user or 'nobody'}.",
                       print_exception=False)
