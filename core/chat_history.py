"""Chat history as plain data: what the model sees, what the Chatbot shows, and the edits
(regenerate, edit-and-resend, clear) as functions that return a new history."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Optional

from core.generation import GenerationStats

MAX_MESSAGE_CHARS = 200_000
MAX_SYSTEM_PROMPT_CHARS = 50_000
MAX_MESSAGES = 2_000
MAX_ALTERNATIVES = 20  # versions of one reply kept by Regenerate


class HistoryError(ValueError):
    """A chat action that cannot apply to this history. The message is meant for the user."""


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str
    stats: Optional[GenerationStats] = None
    error: Optional[str] = None
    notice: Optional[str] = None
    # Regenerated replies keep the earlier ones: every version in order, ``content`` = alternatives[shown].
    alternatives: tuple[str, ...] = ()
    shown: int = 0
    # While a reply streams: its <think> block's tokens so far (the final count is stats.reasoning_tokens).
    reasoning_tokens: Optional[int] = None


History = tuple[ChatMessage, ...]


def content_text(content: Any) -> str:
    """Gradio 6 may hand a message's content back as ``[{"type": "text", "text": ...}]``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(content_text(part) for part in content)
    raise HistoryError(f"unsupported message content of type {type(content).__name__}")


def check_user_text(text: Any) -> str:
    if not isinstance(text, str):
        raise HistoryError("The message must be text.")
    if not text.strip():
        raise HistoryError("Type a message first.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise HistoryError(f"The message is {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}.")
    if "\x00" in text:
        raise HistoryError("The message contains a NUL character.")
    return text


def check_system_prompt(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise HistoryError("The system prompt must be text.")
    if len(text) > MAX_SYSTEM_PROMPT_CHARS:
        raise HistoryError(f"The system prompt is {len(text)} characters; the limit is {MAX_SYSTEM_PROMPT_CHARS}.")
    return text


def add_user_message(history: History, text: Any) -> History:
    if len(history) >= MAX_MESSAGES:
        raise HistoryError("This chat is too long; clear it to continue.")
    return (*history, ChatMessage("user", check_user_text(text)))


def for_regenerate(history: History) -> History:
    """The history ready for a new answer to the last user message: the earlier reply (if any) is
    kept as an alternative, and an empty new one is the version shown."""
    trimmed = list(history)
    versions: tuple[str, ...] = ()
    while trimmed and trimmed[-1].role == "assistant":
        last = trimmed.pop()
        versions = last.alternatives or ((last.content,) if last.content else ())
    if not trimmed:
        raise HistoryError("Nothing to regenerate yet.")
    if versions:
        versions = versions[-(MAX_ALTERNATIVES - 1):]  # the oldest goes once there are too many
        trimmed.append(ChatMessage("assistant", "", alternatives=(*versions, ""), shown=len(versions)))
    return tuple(trimmed)


def flip_reply(history: History, step: Any) -> History:
    """Show the previous (step -1) or next (+1) version of the last reply."""
    if step not in (-1, 1):
        raise HistoryError("Pick the previous or the next reply.")
    if not history or history[-1].role != "assistant" or len(history[-1].alternatives) < 2:
        raise HistoryError("This reply has no other versions: Regenerate makes one.")
    last = history[-1]
    shown = last.shown + step
    if not 0 <= shown < len(last.alternatives):
        raise HistoryError("There is no " + ("earlier" if step < 0 else "later") + " reply.")
    return (*history[:-1], replace(last, content=last.alternatives[shown], shown=shown,
                                   stats=last.stats if shown == len(last.alternatives) - 1 else None,
                                   error=None, notice=None))


def for_continue(history: History) -> History:
    """The chat as it is, checked: its last message must be a reply with text to extend (e.g. one
    cut by the token limit). The model continues it without a new user turn."""
    if not history or history[-1].role != "assistant" or not history[-1].content.strip():
        raise HistoryError("Nothing to continue: the last message is not a reply with text.")
    return history


def edit_user_message(history: History, index: Any, text: Any) -> History:
    """Replace the user message at ``index`` and forget everything after it."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise HistoryError("Pick a message to edit.")
    if not 0 <= index < len(history):
        raise HistoryError("That message is no longer in the chat.")
    if history[index].role != "user":
        raise HistoryError("Only your own messages can be edited.")
    return (*history[:index], ChatMessage("user", check_user_text(text)))


def with_reply(history: History, text: str, stats: Optional[GenerationStats] = None,
               error: Optional[str] = None, notice: Optional[str] = None,
               reasoning_tokens: Optional[int] = None) -> History:
    """``history`` with its trailing assistant reply set (appended if the last message is a user's)."""
    reply = ChatMessage("assistant", text, stats, error, notice, reasoning_tokens=reasoning_tokens)
    if history and history[-1].role == "assistant":
        previous = history[-1]
        if previous.alternatives:  # a regenerated reply: its slot among the versions follows it
            versions = list(previous.alternatives)
            versions[previous.shown] = text
            reply = replace(reply, alternatives=tuple(versions), shown=previous.shown)
        return (*history[:-1], reply)
    return (*history, reply)


_THINK = re.compile(r"\s*<think>(.*?)(</think>\s*|$)", re.S)


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """``(reasoning, answer, finished)`` of a reply that opens with a ``<think>`` block (reasoning
    models); ``("", text, True)`` for any other reply. ``finished``: the block was closed."""
    match = _THINK.match(text)
    if match is None:
        return "", text, True
    return match.group(1).strip(), text[match.end():], bool(match.group(2))


def _reasoning_block(reasoning: str, finished: bool, tokens: Optional[int]) -> str:
    """The collapsed block, headed by its size in the model's tokens (counted as they were generated);
    in words only for a reply whose count is unknown (saved before counts were kept)."""
    size, unit = (tokens, "token") if tokens else (len(reasoning.split()), "word")
    summary = f"{'Reasoning' if finished else 'Thinking…'} · {size} {unit}{'' if size == 1 else 's'}"
    return f"<details><summary>{summary}</summary>\n\n{reasoning}\n\n</details>\n\n"


def reasoning_tokens(msg: ChatMessage) -> Optional[int]:
    """The size of a reply's <think> block in tokens: the backend's count once the reply has ended,
    the live one while it streams; None when unknown."""
    if msg.stats is not None and msg.stats.reasoning_tokens:
        return msg.stats.reasoning_tokens
    return msg.reasoning_tokens


def live_reasoning_tokens(text: str, completion_tokens: int, previous: Optional[int], before: int = 0) -> Optional[int]:
    """While a reply streams: every token so far belongs to its still open <think> block; once the block
    has closed the count stays as it was (the backend's exact count comes with the reply's stats).
    ``before``: the block's tokens in the reply being continued (a Continue's prompt already holds them,
    so the backend counts none of them)."""
    head = text.lstrip()
    if not head.startswith("<think>"):
        return None
    if "</think>" in head:
        return previous if previous is not None else before + completion_tokens
    return before + completion_tokens


def model_messages(history: History, system_prompt: str = "", continuing: bool = False) -> list[dict]:
    """The conversation as the model sees it: an optional system message, then the turns.

    Empty assistant replies (failed before any text) are left out, and with them the need to
    keep roles alternating is preserved by merging nothing: a user turn without an answer is
    simply followed by the next user turn, which every common template accepts.
    ``continuing``: the last reply is being continued; a reply cut inside (or right after) its
    <think> block keeps the block, the only text there is to continue from.
    """
    out: list[dict] = []
    if system_prompt and system_prompt.strip():
        out.append({"role": "system", "content": system_prompt})
    for i, msg in enumerate(history):
        # A reasoning model's earlier <think> blocks are not sent back (as their chat templates do).
        content = split_reasoning(msg.content)[1] if msg.role == "assistant" else msg.content
        if continuing and i == len(history) - 1 and msg.role == "assistant" and not content.strip():
            content = msg.content
        if msg.role == "assistant" and not content.strip():
            continue
        out.append({"role": msg.role, "content": content})
    return out


def format_stats(stats: GenerationStats) -> str:
    parts = [
        f"{stats.completion_tokens} token{'' if stats.completion_tokens == 1 else 's'}",
        "n/a tok/s" if stats.measured_tokens_per_s is None else f"{stats.measured_tokens_per_s:.1f} tok/s",
        f"TTFT {stats.ttft_s * 1000:.0f} ms" if stats.ttft_s < 1 else f"TTFT {stats.ttft_s:.2f} s",
    ]
    if stats.n_ctx:  # a remote engine may not say its context
        parts.append(f"context {stats.context_used}/{stats.n_ctx} ({stats.context_fraction:.0%})")
    if stats.finish_reason == "cancelled":
        parts.append("stopped")
    elif stats.finish_reason in ("length", "context"):
        parts.append("cut off: " + ("max tokens" if stats.finish_reason == "length" else "context full"))
    return " · ".join(parts)


def to_display(history: History) -> list[dict]:
    """Chatbot messages; an assistant message carries its stats line and any error under the text."""
    out = []
    for msg in history:
        text = msg.content
        if msg.role == "assistant":
            reasoning, answer, finished = split_reasoning(text)
            if reasoning or not finished:  # collapsed, so the answer is what shows
                text = _reasoning_block(reasoning, finished, reasoning_tokens(msg)) + answer
            footer = []
            if len(msg.alternatives) > 1:
                footer.append(f"Reply {msg.shown + 1} of {len(msg.alternatives)}")
            if msg.error:
                footer.append(f"Error: {msg.error}")
            if msg.notice:
                footer.append(msg.notice)
            if msg.stats:
                footer.append(format_stats(msg.stats))
            if footer:
                text = (text + "\n\n" if text else "") + "\n".join(f"<sub>{line}</sub>" for line in footer)
        out.append({"role": msg.role, "content": text})
    return out


EXPORT_VERSION = 1
MAX_EXPORT_CHARS = 8 * 1024 * 1024


def export_chat(history: History, system_prompt: str = "") -> dict:
    """A JSON-ready copy of a chat (what the export file and the per-user store hold)."""
    return {"version": EXPORT_VERSION, "system_prompt": system_prompt,
            "messages": [{"role": m.role, "content": m.content,
                          **({"stats": m.stats.to_dict()} if m.stats else {}),
                          **({"alternatives": list(m.alternatives), "shown": m.shown} if m.alternatives else {}),
                          **({"error": m.error} if m.error else {})} for m in history]}


def import_chat(data: Any) -> tuple[History, str]:
    """The chat in ``data`` (from ``export_chat``), checked like typed input; HistoryError if not."""
    if not isinstance(data, dict) or data.get("version") != EXPORT_VERSION:
        raise HistoryError("This is not a FitChat chat export (version 1).")
    messages = data.get("messages")
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
        raise HistoryError(f"A chat export holds a list of at most {MAX_MESSAGES} messages.")
    history: list[ChatMessage] = []
    for i, item in enumerate(messages):
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise HistoryError(f"Message {i + 1}: role must be user or assistant.")
        content = item.get("content")
        if not isinstance(content, str) or len(content) > MAX_MESSAGE_CHARS or "\x00" in content:
            raise HistoryError(f"Message {i + 1}: content must be text of at most {MAX_MESSAGE_CHARS} characters.")
        stats = None
        if isinstance(item.get("stats"), dict):
            try:
                stats = GenerationStats.from_dict(item["stats"])
            except (TypeError, ValueError):
                stats = None
        error = item.get("error") if isinstance(item.get("error"), str) else None
        alternatives, shown = (), 0
        if item["role"] == "assistant" and item.get("alternatives") is not None:
            alternatives, shown = item["alternatives"], item.get("shown")
            if (not isinstance(alternatives, list) or not 1 <= len(alternatives) <= MAX_ALTERNATIVES
                    or not all(isinstance(a, str) and len(a) <= MAX_MESSAGE_CHARS and "\x00" not in a
                               for a in alternatives)
                    or isinstance(shown, bool) or not isinstance(shown, int) or not 0 <= shown < len(alternatives)
                    or alternatives[shown] != content):
                raise HistoryError(f"Message {i + 1}: alternatives must be up to {MAX_ALTERNATIVES} texts, "
                                   "the shown one equal to the content.")
            alternatives = tuple(alternatives)
        history.append(ChatMessage(item["role"], content, stats, error[:2000] if error else None,
                                   alternatives=alternatives, shown=shown))
    return tuple(history), check_system_prompt(data.get("system_prompt", ""))
