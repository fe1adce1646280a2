"""What a finished (or stopped) generation reports, and the incremental text helpers the
backends share: UTF-8 reassembly and stop-string hold-back without re-decoding the reply."""
from __future__ import annotations

import codecs
from dataclasses import dataclass, asdict
from typing import Literal, Optional

FinishReason = Literal["stop", "length", "context", "cancelled", "error"]


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float           # request received by the backend -> first token sampled
    decode_tokens_per_s: float  # tokens after the first, over the time after the first
    total_s: float
    n_ctx: int
    finish_reason: FinishReason
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0  # the reply's leading <think>…</think> block, in tokens (ReasoningCounter)

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def context_fraction(self) -> float:
        return self.context_used / self.n_ctx if self.n_ctx else 0.0

    @property
    def measured_tokens_per_s(self) -> Optional[float]:
        """The decode speed, None for a reply too short to time (see ``speed_measurable``)."""
        return self.decode_tokens_per_s if speed_measurable(self.completion_tokens) else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationStats":
        return cls(**data)


@dataclass
class GenerationProgress:
    """Live counters of a reply in progress (monotonic clock seconds). Updated by the backend."""
    started: float
    n_ctx: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: Optional[float] = None
    last_token_at: Optional[float] = None

    def tokens_per_s(self) -> Optional[float]:
        """The decode speed so far, None until it can be timed (see ``speed_measurable``)."""
        if not speed_measurable(self.completion_tokens):
            return None
        return decode_tokens_per_s(self.completion_tokens, self.first_token_at, self.last_token_at)

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def speed_measurable(completion_tokens: int) -> bool:
    """Decode speed is timed between tokens: a reply of fewer than two has none (unknown, not zero)."""
    return completion_tokens >= 2


def decode_tokens_per_s(completion_tokens: int, t_first: Optional[float], t_last: Optional[float]) -> float:
    if not speed_measurable(completion_tokens) or t_first is None or t_last is None or t_last <= t_first:
        return 0.0
    return (completion_tokens - 1) / (t_last - t_first)


class Utf8Assembler:
    """Turns token byte pieces into text, holding back an incomplete multi-byte character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text with O(stop length) work per delta.

    ``push`` returns the text that is safe to emit now; text that could be the start of a stop
    string is held back until it is resolved. ``stopped`` turns true when a stop string appears;
    the stop string and anything after it are never emitted.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._keep = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped or not text:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(hits)]
        # Hold back the longest tail that is a prefix of some stop string.
        hold = 0
        for n in range(min(self._keep, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self._stops):
                hold = n
                break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class ReasoningCounter:
    """Counts the tokens of a reply's leading ``<think>…</think>`` block (reasoning models) as its tokens
    come, one ``feed`` per token: the block is the reply's first tokens, up to the one that completes
    ``</think>``. ``active`` turns false once the count is final (or the reply has no such block), so a
    loop checks one attribute per token and feeds nothing more."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.active = True
        self.tokens = 0      # the block's tokens so far (0 when the reply has no block)
        self._seen = 0       # the reply's tokens fed so far
        self._text = ""      # the reply's text so far (undecided) or the last characters (inside)
        self._inside = False

    @classmethod
    def for_reply_to(cls, messages) -> "ReasoningCounter":
        """The counter for a reply to ``messages``. A continued reply (a trailing assistant message, the
        Continue button) counts only the tokens that extend a <think> block the message left open: its
        earlier tokens are in the prompt, and a block cannot open anywhere but at the reply's start."""
        counter = cls()
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            head = last.get("content").lstrip() if isinstance(last.get("content"), str) else ""
            if head.startswith(cls.OPEN) and cls.CLOSE not in head:
                counter._inside, counter._text = True, head[-len(cls.CLOSE):]
            else:
                counter.active = False
        return counter

    def feed(self, text: str) -> None:
        self._seen += 1
        if not self._inside:
            self._text += text
            head = self._text.lstrip()
            if head.startswith(self.OPEN):
                self._inside, self._text = True, head[len(self.OPEN):]
            elif not self.OPEN.startswith(head):
                self.active = False  # the reply does not open with a block
                return
            else:
                return
        else:
            self._text += text
        self.tokens = self._seen
        if self.CLOSE in self._text:
            self.active = False
        else:
            self._text = self._text[-len(self.CLOSE):]
