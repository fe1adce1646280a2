"""Expected user errors as toasts, not as blocking "Error" badges.

Gradio shows a ``gr.Error`` raised by a handler as a red badge over every output (the chat, the
message box, a table) that stays until its small × is found, and prints a traceback. Handlers
raise ``gr.Error`` for input they refuse; ``toast_user_errors`` turns that into a ``gr.Warning``
toast, leaves the outputs as they were (``gr.skip``) and logs one line (API clients, which
gradio_client marks, still get the error). A handler outside the
queue cannot show a toast (Gradio needs the queue for it): events that can refuse input are queued.
"""
from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from core.chat_history import HistoryError

log = logging.getLogger("fitchat.ui")


def _skips(n_outputs: int):
    if n_outputs == 0:
        return None
    return gr.skip() if n_outputs == 1 else tuple(gr.skip() for _ in range(n_outputs))


def _text(exc: Exception) -> str:
    message = str(getattr(exc, "message", None) or exc)
    return message.splitlines()[0] if message else type(exc).__name__


def _from_api_client() -> bool:
    """gradio_client marks its calls; API clients keep getting errors as errors."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-gradio-user") == "api"


def _refused(fn, exc: Exception) -> None:
    if _from_api_client():
        log.warning("fitchat: refused %s: %s", getattr(fn, "__name__", "handler"), _text(exc)[:300])
        if isinstance(exc, gr.Error):
            exc.print_exception = False  # one log line above, not a traceback
            raise exc
        raise gr.Error(str(exc), print_exception=False) from None
    log.warning("fitchat: refused %s: %s", getattr(fn, "__name__", "handler"), _text(exc)[:300])
    gr.Warning(str(getattr(exc, "message", None) or exc))


def toast_user_errors(fn, n_outputs: int):
    """``fn`` with ``gr.Error``/``HistoryError`` shown as a toast and the outputs left unchanged."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (gr.Error, HistoryError) as exc:
                _refused(fn, exc)
                yield _skips(n_outputs)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (gr.Error, HistoryError) as exc:
            _refused(fn, exc)
            return _skips(n_outputs)
    return wrapper


def install(app: gr.Blocks) -> None:
    """Wrap every handler of ``app`` (called once, after all tabs are built)."""
    for block_fn in app.fns.values():
        fn = block_fn.fn
        if fn is None or getattr(fn, "_fitchat_toasts", False) or inspect.iscoroutinefunction(fn) \
                or inspect.isasyncgenfunction(fn):
            continue
        wrapped = toast_user_errors(fn, len(block_fn.outputs))
        wrapped._fitchat_toasts = True
        block_fn.fn = wrapped
