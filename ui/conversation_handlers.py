"""Conversation list handlers: plain functions of (context, user, inputs) that tests call directly.

A tab holds its conversation as ``Current`` = (id, revision), or None before its first message.
Every write names the revision it started from; the store writes a conversation that changed in
another tab as a new one instead of overwriting it (``Saved.forked``), and the tab says so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr

from core.chat_history import History, HistoryError, check_system_prompt, export_chat, import_chat, to_display
from core.conversations import check_conversation_id, check_query, check_title, file_stem, to_markdown
from ui import export_files
from ui.context import AppContext

Current = Optional[tuple[str, int]]
MAX_IMPORT_BYTES = 8 * 1024 * 1024
EXPORT_FORMATS = ("Markdown", "JSON")
FORKED = ("This conversation was changed in another tab or window meanwhile. Nothing was overwritten: "
          "this tab's version continues as a new conversation in the list.")


def _current(value: Any) -> Current:
    # gr.State is server-side, but be strict anyway: only our own pairs are accepted.
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], int):
        try:
            return check_conversation_id(value[0]), value[1]
        except HistoryError:
            return None
    return None


def _history(value: Any) -> History:
    return tuple(value) if isinstance(value, (tuple, list)) else ()


def _system(value: Any) -> str:
    try:
        return check_system_prompt(value)
    except HistoryError:
        return ""


def save(ctx: AppContext, user: Optional[str], current: Any, history: Any, system_prompt: Any) -> Current:
    """Write the tab's conversation (a new one when it has none yet); returns the new ``Current``."""
    store = ctx.conversations
    history = _history(history)
    if store is None or not history:
        return _current(current)
    cur = _current(current)
    saved = store.save(user, cur[0] if cur else None, cur[1] if cur else 0, history, _system(system_prompt))
    if saved.forked:
        gr.Info(FORKED)
    return saved.id, saved.revision


def _ends_the_reply(history: Any) -> bool:
    """The reply's last update: it carries the reply's stats or its error."""
    last = history[-1] if history else None
    return last is not None and last.role == "assistant" and (last.stats is not None or bool(last.error))


def persist(ctx: AppContext, user: Optional[str], current: Any, system_prompt: Any,
            updates: Iterator[tuple]) -> Iterator[tuple]:
    """Pass ``(display, history)`` updates through as ``(display, history, current)`` the moment
    they come (holding one back delayed every token, the first one too), writing the conversation
    when the message is taken and before the reply's last update (stats or error) goes out, so the
    tab holds the revision on disk and nothing follows what the user saw last (a New chat pressed
    then stays new). A stream that ends otherwise is written and its last update sent once more. A
    reply whose page went away is still written (its partial text kept)."""
    cur = _current(current)
    last = None
    written = True
    try:
        for update in updates:
            first = last is None
            last, written = update, False
            if first or _ends_the_reply(update[1]):
                cur = save(ctx, user, cur, update[1], system_prompt)
                written = True
            yield (*update, cur)
        if not written:
            cur = save(ctx, user, cur, last[1], system_prompt)
            written = True
            yield (*last, cur)
    finally:
        if not written:  # closed early: keep what was written so far
            save(ctx, user, cur, last[1], system_prompt)


def choices(ctx: AppContext, user: Optional[str], query: Any = "") -> list[tuple[str, str]]:
    if ctx.conversations is None:
        return []
    return [(c.title, c.id) for c in ctx.conversations.list(user, check_query(query))]


def list_update(ctx: AppContext, user: Optional[str], query: Any, current: Any):
    cur = _current(current)
    options = choices(ctx, user, query)
    selected = cur[0] if cur and any(cid == cur[0] for _, cid in options) else None
    return gr.Radio(choices=options, value=selected)


Opened = tuple[list, History, Current, str, str]  # display, history, current, system prompt, title


def empty() -> Opened:
    return [], (), None, gr.skip(), ""


def open_conversation(ctx: AppContext, user: Optional[str], conversation_id: Any) -> Opened:
    if ctx.conversations is None:
        raise gr.Error("Conversations are not kept in this app.")
    conv = ctx.conversations.load(user, check_conversation_id(conversation_id))
    if conv is None:
        raise gr.Error("That conversation is no longer there (deleted in another tab?).")
    return to_display(conv.history), conv.history, (conv.id, conv.revision), conv.system_prompt, conv.title


def new_conversation(ctx: AppContext, session: str) -> Opened:
    """An empty chat; the one before stays in the list (it is written at every turn). The system
    prompt is the user's setting and stays as it is."""
    ctx.cancels.cancel(session)
    return empty()


def restore(ctx: AppContext, user: Optional[str]) -> Opened:
    """The user's latest conversation, when the page opens (and a damaged store file, reported)."""
    store = ctx.conversations
    if store is None:
        return [], (), None, "", ""
    if store.problem:
        gr.Warning(store.problem, duration=None)
    latest = store.latest(user)
    if latest is None:
        return [], (), None, "", ""
    return open_conversation(ctx, user, latest)


def rename(ctx: AppContext, user: Optional[str], current: Any, title: Any) -> str:
    cur = _current(current)
    if cur is None or ctx.conversations is None:
        raise gr.Error("This chat has no messages yet: send one first, then rename it.")
    title = check_title(title)
    if not ctx.conversations.rename(user, cur[0], title):
        raise gr.Error("That conversation is no longer there (deleted in another tab?).")
    gr.Info(f"Renamed to “{title}”.")
    return title


def delete(ctx: AppContext, user: Optional[str], session: str, current: Any) -> Opened:
    cur = _current(current)
    if cur is None or ctx.conversations is None:
        raise gr.Error("This chat has no messages yet; there is nothing to delete.")
    ctx.cancels.cancel(session)
    ctx.conversations.delete(user, cur[0])
    gr.Info("Conversation deleted.")
    return empty()


def export_file(ctx: AppContext, user: Optional[str], current: Any, history: Any, system_prompt: Any,
                fmt: Any, title: Any = "") -> str:
    """The conversation as Markdown or JSON in a private temporary file that Gradio serves once
    (removed after ``export_files.EXPORT_TTL_S`` and at exit)."""
    if fmt not in EXPORT_FORMATS:
        raise gr.Error(f"Pick an export format: {', '.join(EXPORT_FORMATS)}.")
    history, system = _history(history), _system(system_prompt)
    if not history:
        raise gr.Error("This chat is empty; there is nothing to export yet.")
    title = title if isinstance(title, str) and title.strip() else "Chat"
    if fmt == "JSON":
        text, suffix = json.dumps({**export_chat(history, system), "title": title}, ensure_ascii=False, indent=1), ".json"
    else:
        text, suffix = to_markdown(title, history, system), ".md"
    # In a fresh private folder of the system temp dir, the one place Gradio serves outputs from.
    folder = export_files.new_export_folder()
    path = folder / (file_stem(title) + suffix)
    path.write_text(text, encoding="utf-8")
    return str(path)


def import_file(ctx: AppContext, user: Optional[str], upload: Any) -> Opened:
    """An uploaded JSON export becomes a new conversation (never written over an existing one)."""
    path = getattr(upload, "name", upload)
    if not isinstance(path, str):
        raise gr.Error("Pick a .json chat export to import.")
    try:
        raw = Path(path).read_bytes()[: MAX_IMPORT_BYTES + 1]
    except OSError:
        raise gr.Error("The uploaded file could not be read.") from None
    if len(raw) > MAX_IMPORT_BYTES:
        raise gr.Error(f"The file is larger than {MAX_IMPORT_BYTES // 2**20} MiB.")
    try:
        data = json.loads(raw.decode("utf-8"))
        history, system = import_chat(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise gr.Error(str(exc) if isinstance(exc, HistoryError) else "The file is not a JSON chat export.") from None
    if not history:
        raise gr.Error("The export holds no messages.")
    title = None
    if isinstance(data.get("title"), str):
        try:
            title = check_title(data["title"]) + " (imported)"
        except HistoryError:
            title = None
    if ctx.conversations is None:
        return to_display(history), history, None, system, title or ""
    saved = ctx.conversations.create(user, history, system, title)
    gr.Info("Imported as a new conversation.")
    return open_conversation(ctx, user, saved.id)
