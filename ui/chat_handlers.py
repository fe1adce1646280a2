"""Chat tab handlers: plain functions of (context, session, inputs) that tests call directly.

Every input is validated here, on the server: a client can bypass the UI's controls.
Streaming handlers yield ``(chatbot_messages, history)``; the message box is not theirs (it is
cleared once, when a message is taken: ``take_message``), so a draft typed during a reply stays.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Iterator, Optional, Sequence

import gradio as gr

from backends.base import BackendError, LoadSpec
from backends.turns import BusyError
from core.chat_history import (History, HistoryError, add_user_message, check_system_prompt, content_text,
                               edit_user_message, export_chat, flip_reply, for_continue, for_regenerate,
                               import_chat, live_reasoning_tokens, model_messages, reasoning_tokens,
                               to_display, with_reply)
from core.model_catalog import UnknownModelError
from core.options import LoadOptions, SamplingOptions, TransformersLoadOptions
from ui.context import AppContext
from ui.option_widgets import options_from_values
from ui.status import format_status

SAMPLING_FIELDS: tuple[str, ...] = tuple(SamplingOptions.model_fields)
LOAD_FIELDS: tuple[str, ...] = ("n_ctx", "n_gpu_layers", "kv_type", "flash_attn", "n_threads", "n_batch",
                                "split_mode", "tensor_split", "main_gpu", "n_cpu_moe", "kv_placement", "parallel")
_MIN_UPDATE_INTERVAL_S = 1 / 15  # coalesce deltas: ~15 updates a second look smooth and cost little CPU
WAIT_S = 600.0        # longest wait in line for the model
_WAIT_POLL_S = 0.25   # how often a waiting reply re-checks its place

Update = tuple[list[dict], History]


def parse_sampling(values: Sequence[Any]) -> SamplingOptions:
    return options_from_values(SamplingOptions, SAMPLING_FIELDS, values, "sampling options")


def _history(value: Any) -> History:
    # gr.State is server-side, but be strict anyway: only our own tuples are accepted.
    return tuple(value) if isinstance(value, (tuple, list)) else ()


def _check(fn, *args):
    try:
        return fn(*args)
    except HistoryError as exc:
        raise gr.Error(str(exc)) from None


def stream_reply(ctx: AppContext, session: str, history: History, system_prompt: str,
                 sampling: SamplingOptions, prefix: str = "") -> Iterator[History]:
    """Yield ``history`` with a growing assistant reply; the last item carries stats or an error.
    ``prefix``: the reply being continued (``history`` then ends with it)."""
    cancel = ctx.cancels.start(session)
    text = prefix
    # The reply's <think> block's tokens so far (core.chat_history.live_reasoning_tokens). A continued
    # reply adds to the block's own count; a block saved before counts were kept stays in words.
    continued_block = prefix.lstrip().startswith("<think>")
    known = reasoning_tokens(history[-1]) if continued_block else None
    counting = not continued_block or known is not None
    before = known or 0
    thinking = known if "</think>" in prefix else None
    final = None  # the last item: yielded after the session is free, so a Send right after it is taken
    try:
        with ctx.manager.queue_turn() as turn:  # BusyError when the line is full
            try:
                yield from _wait_in_line(ctx, turn, history, cancel)
            except BusyError:
                if not cancel.is_set():
                    raise
                yield with_reply(history, prefix, notice="Stopped before the reply started.")
                return
            messages = model_messages(history, system_prompt, continuing=bool(prefix))
            stream = ctx.manager.stream_chat(messages, sampling, cancel, turn=turn)
            try:
                last = 0.0
                for delta in stream:
                    text += delta
                    now = time.monotonic()
                    if now - last >= _MIN_UPDATE_INTERVAL_S:
                        last = now
                        if counting:
                            thinking = live_reasoning_tokens(text, stream.progress.completion_tokens, thinking,
                                                             before)
                        yield with_reply(history, text, reasoning_tokens=thinking)
            finally:
                stream.close()
        stats = stream.stats
        if continued_block:  # the backend counted only the continuation's share of the block
            stats = replace(stats, reasoning_tokens=before + stats.reasoning_tokens if counting else 0)
        final = with_reply(history, text, stats=stats, reasoning_tokens=thinking)
    except BackendError as exc:
        final = with_reply(history, text, error=str(exc), reasoning_tokens=thinking)
    finally:
        # Reached on normal end, on error, and when Gradio closes the generator because the
        # client went away: the worker's generation stops either way.
        cancel.set()
        ctx.cancels.finish(session, cancel)
    if final is not None:
        yield final


def _wait_in_line(ctx: AppContext, turn, history: History, cancel) -> Iterator[History]:
    """Until ``turn`` holds the model: show what it waits for (a load, or the replies ahead)."""
    shown = None
    for ahead in turn.waiting(cancel, WAIT_S, _WAIT_POLL_S):
        if ctx.manager.state().status == "loading":
            notice = "Waiting for the model to finish loading…"
        else:
            notice = f"Waiting for the model: {ahead} {'reply' if ahead == 1 else 'replies'} ahead of you…"
        if notice != shown:
            shown = notice
            yield with_reply(history, "", notice=notice)


def _stream_updates(ctx: AppContext, session: str, history: History, system_prompt: Any,
                    sampling_values: Sequence[Any], prefix: str = "") -> Iterator[Update]:
    sampling = parse_sampling(sampling_values)
    system = _check(check_system_prompt, system_prompt)
    yield to_display(history), history
    for current in stream_reply(ctx, session, history, system, sampling, prefix):
        yield to_display(current), current


BUSY_MESSAGE = ("A reply is still being written. Your message stays in the box: send it when the reply "
                "ends, or press Stop (Esc) first.")


def take_message(ctx: AppContext, session: str, message: Any) -> tuple[Any, str]:
    """The message box's text, taken once: ``("", text)`` clears the box and hands the text on.
    Refused (an empty box, a reply still running) it says why in a toast and keeps the box as it
    is: ``(gr.skip(), "")``; an empty taken text makes the reply step do nothing."""
    try:
        text = add_user_message((), message)[0].content
    except HistoryError as exc:
        gr.Warning(str(exc))
        return gr.skip(), ""
    if not ctx.cancels.reserve(session):
        gr.Warning(BUSY_MESSAGE)
        return gr.skip(), ""
    return "", text


def send(ctx: AppContext, session: str, message: Any, history: Any, system_prompt: Any,
         sampling_values: Sequence[Any]) -> Iterator[Update]:
    parse_sampling(sampling_values)  # reject bad options before the message is added
    history = _check(add_user_message, _history(history), message)
    yield from _stream_updates(ctx, session, history, system_prompt, sampling_values)


def regenerate(ctx: AppContext, session: str, history: Any, system_prompt: Any,
               sampling_values: Sequence[Any]) -> Iterator[Update]:
    history = _check(for_regenerate, _history(history))
    yield from _stream_updates(ctx, session, history, system_prompt, sampling_values)


def continue_reply(ctx: AppContext, session: str, history: Any, system_prompt: Any,
                   sampling_values: Sequence[Any]) -> Iterator[Update]:
    """Extend the last reply (e.g. cut by the token limit) without a new user turn: the model sees
    the conversation ending with that reply (``core.chat_template.render_prompt``)."""
    history = _check(for_continue, _history(history))
    yield from _stream_updates(ctx, session, history, system_prompt, sampling_values, prefix=history[-1].content)


def edit(ctx: AppContext, session: str, index: Any, new_text: Any, history: Any, system_prompt: Any,
         sampling_values: Sequence[Any]) -> Iterator[Update]:
    history = _check(edit_user_message, _history(history), index, _check(content_text, new_text))
    yield from _stream_updates(ctx, session, history, system_prompt, sampling_values)


def message_index(value: Any) -> Any:
    """A message index as API clients send it (JSON numbers may arrive as 2.0); anything else is
    left for ``edit_user_message`` to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


PendingEdit = tuple[int, str, int, bool]  # (message index, new text, chat length when asked, confirmed)


def ask_edit(history: Any, index: Any, new_text: Any) -> tuple[PendingEdit, int]:
    """Check an edit of message ``index`` before anything is dropped. Returns the pending edit and
    how many later messages it would drop besides the edited message's own reply: with none the
    edit is confirmed at once; with some the tab asks first (``run_edit`` waits for the yes)."""
    history = _history(history)
    text = _check(content_text, new_text)
    _check(edit_user_message, history, index, text)
    later = max(0, len(history) - index - 2)
    return (index, text, len(history), later == 0), later


def confirm_edit(pending: Any) -> Optional[PendingEdit]:
    """The user said yes: drop the later turns."""
    if isinstance(pending, tuple) and len(pending) == 4 and not pending[3]:
        return (*pending[:3], True)
    return None


def edit_confirmed(pending: Any) -> bool:
    return isinstance(pending, tuple) and len(pending) == 4 and pending[3] is True


def run_edit(ctx: AppContext, session: str, pending: Any, history: Any, system_prompt: Any,
             sampling_values: Sequence[Any]) -> Iterator[Update]:
    """Resend a confirmed edit; nothing for an edit still waiting for its yes (or a "keep")."""
    if not edit_confirmed(pending):
        return
    index, text, length, _ = pending
    if len(_history(history)) != length:
        raise gr.Error("The chat changed since you edited that message: edit it again.")
    yield from edit(ctx, session, index, text, history, system_prompt, sampling_values)


def flip(history: Any, step: Any) -> Update:
    """Show another version of the last reply (the arrows under the chat)."""
    flipped = _check(flip_reply, _history(history), step)
    return to_display(flipped), flipped


def stop(ctx: AppContext, session: str) -> None:
    ctx.cancels.cancel(session)


def clear(ctx: AppContext, session: str) -> tuple[list, History]:
    ctx.cancels.cancel(session)
    return [], ()


def load_model(ctx: AppContext, name: Any, load_values: Sequence[Any]) -> str:
    try:
        entry = ctx.catalog().get(name)
    except UnknownModelError as exc:
        raise gr.Error(str(exc)) from None
    options = options_from_values(LoadOptions, LOAD_FIELDS, load_values, "load options")
    cores = os.cpu_count() or 1
    if options.n_threads is not None and options.n_threads > cores:
        raise gr.Error(f"CPU threads: this machine has {cores} CPU core{'s' if cores > 1 else ''}; pick at most "
                       f"{cores} (more threads than cores slow llama.cpp down), or auto.")
    if entry.backend == "transformers":
        # The panel's fields are llama.cpp's; a transformers folder takes its own defaults (NF4)
        # with the context asked for.
        options = TransformersLoadOptions(n_ctx=options.n_ctx)
    try:
        ctx.manager.load(LoadSpec(entry.path, options, backend=entry.backend, display_name=entry.name))
    except BackendError as exc:
        gr.Warning(str(exc))
        state = ctx.manager.state()
        if state.error != str(exc):  # the previous model is still loaded: say both
            return f"**Load failed.** {exc}\n\n{format_status(state)}"
    state = ctx.manager.state()
    if state.plan is not None and state.plan.warning:
        gr.Warning(state.plan.warning)
    if state.status == "ready" and state.info is not None and options.n_ctx and state.info.n_ctx < options.n_ctx:
        gr.Warning(f"Context {options.n_ctx:,} is more than this model can use here: it was loaded with "
                   f"{state.info.n_ctx:,} (trained {state.info.n_ctx_train:,}).")
    return format_status(state)


def unload_model(ctx: AppContext) -> str:
    try:
        ctx.manager.unload()
    except BackendError as exc:
        gr.Warning(str(exc))
    return format_status(ctx.manager.state())
