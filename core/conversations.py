"""Conversations as plain data: titles, search text, ids, and the Markdown export. The SQLite store
(services/conversation_store.py) and the UI (ui/conversation_handlers.py) build on these."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from core.chat_history import History, HistoryError

NEW_TITLE = "New chat"
TITLE_CHARS = 60         # titles made from the first message are cut here (on a word boundary)
MAX_TITLE_CHARS = 120    # a title the user types
MAX_QUERY_CHARS = 200
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    updated: float  # Unix time of the last write


def _one_line(text: str) -> str:
    return " ".join(text.split())


def title_from(history: History) -> str:
    """The first user message on one line, cut at a word boundary; ``NEW_TITLE`` when there is none."""
    first = next((m.content for m in history if m.role == "user" and m.content.strip()), "")
    line = _one_line(first)
    if not line:
        return NEW_TITLE
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0] if " " in line[:TITLE_CHARS] else line[:TITLE_CHARS]
    return cut.rstrip(" ,.;:") + "…"


def check_title(value: Any) -> str:
    if not isinstance(value, str):
        raise HistoryError("The title must be text.")
    title = _one_line(value)
    if not title:
        raise HistoryError("Type a title first.")
    if len(title) > MAX_TITLE_CHARS:
        raise HistoryError(f"The title is {len(title)} characters; the limit is {MAX_TITLE_CHARS}.")
    if any(unicodedata.category(c) == "Cc" for c in title):
        raise HistoryError("The title contains control characters.")
    return title


def check_conversation_id(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise HistoryError("Pick a conversation from the list.")
    return value


def check_query(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HistoryError("The search must be text.")
    return _one_line(value)[:MAX_QUERY_CHARS]


def search_text(title: str, history: History, system_prompt: str = "") -> str:
    """What a search matches against: the title and every message, case-folded."""
    return "\n".join([title, system_prompt, *(m.content for m in history)]).casefold()


def to_markdown(title: str, history: History, system_prompt: str = "") -> str:
    """A readable export: the title, the system prompt, then each turn under its speaker."""
    lines = [f"# {title}", ""]
    if system_prompt.strip():
        lines += ["**System prompt**", "", system_prompt, ""]
    for msg in history:
        lines += [f"## {'You' if msg.role == 'user' else 'Assistant'}", "", msg.content, ""]
        if msg.error:
            lines += [f"> Error: {msg.error}", ""]
    return "\n".join(lines).rstrip() + "\n"


def file_stem(title: str) -> str:
    """A safe file name stem from a title (letters, digits, dashes; never a path)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", unicodedata.normalize("NFKD", title)).strip("-").lower()
    return (stem[:50].rstrip("-") or "chat")
