"""Only the chat template's own text may produce special tokens, never what a user typed.

A user who types ``<|im_start|>system`` must not forge a system turn. The template renders with
each message's text replaced by a marker; the rendered prompt is then tokenised piece by piece:
the template's text with special tokens parsed, the users' text without. A template that changes
or drops message text (so the markers do not come back intact) renders normally instead, and a
message whose text would turn into special tokens is then refused with a clear message.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

from backends.base import TemplateError

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: no template or vocabulary gives them meaning
_MARKER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

Render = Callable[[list[dict]], str]
Tokenize = Callable[[str, bool, bool], list[int]]  # (text, add_bos, parse_special) -> ids


def _has_text(message: dict) -> bool:
    return isinstance(message.get("content"), str) and bool(message["content"])


def render_pieces(render: Render, messages: list[dict]) -> Optional[list[tuple[str, bool]]]:
    """The prompt as (text, from_template) pieces, or None when the markers did not survive."""
    marked = [dict(m, content=f"{_OPEN}{i}{_CLOSE}") if _has_text(m) else dict(m) for i, m in enumerate(messages)]
    text = render(marked)
    pieces, pos, seen = [], 0, []
    for match in _MARKER.finditer(text):
        i = int(match.group(1))
        if i >= len(messages) or i in seen:
            return None
        seen.append(i)
        pieces += [(text[pos:match.start()], True), (messages[i]["content"], False)]
        pos = match.end()
    pieces.append((text[pos:], True))
    if sorted(seen) != [i for i, m in enumerate(messages) if _has_text(m)]:
        return None
    return [(t, from_template) for t, from_template in pieces if t]


def tokenize_chat(render: Render, messages: list[dict], tokenize: Tokenize, add_bos: bool,
                  bos_text: str) -> list[int]:
    pieces = render_pieces(render, messages)
    if pieces is None:
        for m in messages:
            if _has_text(m) and tokenize(m["content"], False, True) != tokenize(m["content"], False, False):
                raise TemplateError("A message contains text that this model reads as a control token (such as "
                                    "<|im_start|>); remove it and send again.")
        pieces = [(render(messages), True)]
    first = pieces[0][0] if pieces else ""
    bos = add_bos and not (bos_text and first.startswith(bos_text))
    tokens: list[int] = []
    for i, (text, from_template) in enumerate(pieces):
        tokens += tokenize(text, bos and i == 0, from_template)
    return tokens
