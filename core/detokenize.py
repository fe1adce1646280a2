"""Streamed text from a growing list of tokens, decoding only a short window per token.

Decoding token by token loses the spaces and multi-byte characters that depend on neighbours
(SentencePiece's leading space, byte-level BPE splitting a character). Decoding the whole reply on
every token is quadratic. The window technique (as in TGI and vLLM) decodes the previous
emission's tokens with and without the new ones and emits the difference; text ending in U+FFFD
(an incomplete UTF-8 character) waits for the next token.
"""
from __future__ import annotations

from typing import Callable, Sequence

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the window already emitted (context for the next decode)
        self._read = 0    # end of the emitted tokens

    def push(self, token: int) -> str:
        """Add one token; return the text that is now final (possibly "")."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 64:  # keep the list short: only the window matters
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return after[len(before):]

    def flush(self) -> str:
        """The text of tokens still held back (an incomplete character is emitted as U+FFFD)."""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):] if len(after) > len(before) else ""
