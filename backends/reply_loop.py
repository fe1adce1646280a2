"""The token loop every engine shares: sample, stop on an end token, Stop, a stop string, the token
limit or a full context; stream the text as it becomes final; count tokens for the live progress;
report the stats. Engines supply the model-specific steps as a ``Decoding``."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Generator, Optional

from backends.base import PromptTooLongError
from core.generation import GenerationProgress, GenerationStats, ReasoningCounter, StopMatcher, decode_tokens_per_s
from core.options import SamplingOptions


@dataclass(frozen=True)
class Decoding:
    sample: Callable[[], int]          # the next token from the current logits
    is_end: Callable[[int], bool]      # an end-of-generation token (not part of the reply)
    text: Callable[[int], str]         # the token's text as far as it is final (may be "")
    flush: Callable[[], str]           # text still held back when the reply ends
    advance: Callable[[int], None]     # evaluate the token: the logits for the next one
    context_full: Callable[[], bool]   # no room to evaluate another token


def check_prompt_fits(prompt_tokens: int, n_ctx: int) -> None:
    if prompt_tokens >= n_ctx:
        raise PromptTooLongError(
            f"The conversation is {prompt_tokens} tokens but the context holds {n_ctx}. "
            "Clear the chat, shorten it, or load the model with a larger context.")


def reply_stats(started: float, prompt_tokens: int, n_ctx: int, reason: str, completion: int = 0,
                t_first: Optional[float] = None, t_last: Optional[float] = None, cached: int = 0,
                reasoning: int = 0) -> GenerationStats:
    return GenerationStats(
        prompt_tokens=prompt_tokens, completion_tokens=completion,
        ttft_s=round((t_first or time.monotonic()) - started, 4),
        decode_tokens_per_s=round(decode_tokens_per_s(completion, t_first, t_last), 2),
        total_s=round(time.monotonic() - started, 4), n_ctx=n_ctx, finish_reason=reason,
        cached_prompt_tokens=cached, reasoning_tokens=reasoning)


def stream_reply(step: Decoding, params: SamplingOptions, template_stop: tuple[str, ...], cancel: threading.Event,
                 progress: GenerationProgress, prompt_tokens: int, n_ctx: int,
                 cached: int = 0, think: Optional[ReasoningCounter] = None) -> Generator[str, None, GenerationStats]:
    """``think``: the reply's ``ReasoningCounter.for_reply_to`` (a fresh one when not given)."""
    stops = StopMatcher(tuple(params.stop) + template_stop)
    think = think or ReasoningCounter()
    completion, t_first, t_last, reason = 0, None, None, "stop"
    while True:
        if cancel.is_set():
            reason = "cancelled"
            break
        token = step.sample()
        now = time.monotonic()
        t_first = t_first or now
        if step.is_end(token):
            break
        completion += 1
        t_last = now
        progress.completion_tokens, progress.first_token_at, progress.last_token_at = completion, t_first, now
        text = step.text(token)
        if think.active:
            think.feed(text)
        delta = stops.push(text)
        if delta:
            yield delta
        if stops.stopped:
            break
        if completion >= params.max_tokens:
            reason = "length"
            break
        if step.context_full():
            reason = "context"
            break
        step.advance(token)
    tail = stops.push(step.flush()) + stops.flush()
    if tail:
        yield tail
    return reply_stats(progress.started, prompt_tokens, n_ctx, reason, completion, t_first, t_last, cached,
                       think.tokens)
