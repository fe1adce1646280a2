"""The decode loop of the llama.cpp engine: one thread owns the context and runs continuous batching.

Each step builds one ``llama_batch`` with the next token of every running reply plus prompt chunks of
replies that joined (filling the batch up to ``n_batch``), calls ``llama_decode`` once, and samples
each reply that has logits with its own sampler chain, in C, straight from llama.cpp's logits (no
copy into Python). A reply joins at the next step; Stop, a closed stream or the end of a reply frees
its slot before the next step. With one slot this is the lean single-reply loop: per token one
decode, one sample, a cached piece of text.

Replies hand text to their consumer through a queue: ``str`` deltas, then ``GenerationStats`` at the
end, or an exception; a reply that asked for log-probabilities also gets lists of (logits row copy,
token), each just before the delta that carries those tokens' text, for ``logprob_entries``
(``backends.llama_logprobs``).
"""
from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generator, Optional

from backends.base import BackendError, NotLoadedError
from backends.llama_logprobs import LogprobText, token_logprob
from backends.llama_sampling import SamplerChain
from backends.llama_slots import Slot, SlotPool
from backends.reply_loop import reply_stats
from core.generation import GenerationProgress, ReasoningCounter, StopMatcher, Utf8Assembler
from core.options import SamplingOptions


ABORTED = 2  # llama_decode's return code when the abort callback stopped it
ABORTABLE_TOKENS = 64  # a batch this large (a prompt chunk) runs with the abort callback installed
SLOW_STEP_S = 0.1  # ... and so does every step after one that took this long


@dataclass(frozen=True)
class ReplyRecord:
    seq_id: int
    prompt_tokens: int
    cached: int
    joined_step: int
    first_step: Optional[int]
    end_step: int
    reason: str


class Reply:
    """One reply's state, shared by its consumer (``out``, ``closed``) and the loop (the rest)."""

    def __init__(self, tokens: list[int], params: SamplingOptions, stops: tuple[str, ...],
                 cancel: threading.Event, progress: GenerationProgress, sampler: SamplerChain,
                 logprobs: Optional[int] = None, think: Optional[ReasoningCounter] = None) -> None:
        self.tokens, self.params, self.cancel, self.progress, self.sampler = tokens, params, cancel, progress, sampler
        self.top_logprobs = logprobs  # None: not asked for
        self.logprobs = LogprobText() if logprobs is not None else None
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False    # the consumer went away
        self.done = False      # the loop has sent the end (stats or an error)
        self.slot: Optional[Slot] = None
        self.cached = 0        # prompt tokens reused from the slot's cache
        self.pending: Optional[int] = None  # sampled, not yet evaluated
        self.idx = -1          # this step's output row, -1 when it has none
        self.chunk: list[int] = []  # tokens this step evaluates for the reply
        self.text = Utf8Assembler()
        self.stops = StopMatcher(tuple(params.stop) + stops)
        self.think = think or ReasoningCounter()  # fed only until it knows the reply's <think> block (if any)
        self.completion = 0
        self.t_first: Optional[float] = None
        self.t_last: Optional[float] = None
        self.joined_step = 0   # the loop's step count when the reply was submitted
        self.first_step: Optional[int] = None  # ... when its first token was sampled

    def stopped(self) -> bool:
        return self.closed or self.cancel.is_set()


class BatchLoop:
    def __init__(self, ctx, vocab, n_batch: int, n_parallel: int, n_ctx_seq: int,
                 describe_failure: Callable[[int], str]) -> None:
        import llama_cpp as lc

        self._lc, self._ctx, self._vocab = lc, ctx, vocab
        self._mem = lc.llama_get_memory(ctx)
        self.n_batch, self.n_ctx_seq = n_batch, n_ctx_seq
        self.pool = SlotPool(n_parallel)
        self._describe_failure = describe_failure
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        b = self._batch
        # Views over the batch's arrays: a prompt chunk is one slice assignment, not a ctypes call a token.
        self._tok = (ctypes.c_int32 * n_batch).from_address(ctypes.addressof(b.token.contents))
        self._pos = (ctypes.c_int32 * n_batch).from_address(ctypes.addressof(b.pos.contents))
        self._out = (ctypes.c_int8 * n_batch).from_address(ctypes.addressof(b.logits.contents))
        self._seq = [b.seq_id[i] for i in range(n_batch)]
        for i in range(n_batch):
            b.n_seq_id[i] = 1
        self.steps = 0  # decode steps so far
        # Where a step's time goes (bench/gpu_parallel.py reads it): llama_decode, the samplers, the rest.
        self.times = {"steps": 0, "batch_tokens": 0, "step_s": 0.0, "decode_s": 0.0, "sample_s": 0.0}
        self.aborted = 0  # decodes the abort callback stopped
        self.history: deque[ReplyRecord] = deque(maxlen=64)  # the last replies' slot and step accounting
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._waiting: deque[Reply] = deque()
        self._active: list[Reply] = []
        self._cond = threading.Condition()
        self._closing = False
        self._paused = False  # something else uses the context (the quality check): admit no reply
        # Sampling several replies a step: each llama_sampler_sample walks an n_vocab array in C with
        # the GIL released, so a few threads run them side by side (GPU hosts have idle cores then).
        workers = min(n_parallel, 8, max(2, (os.cpu_count() or 1) // 2))
        self._samplers = ThreadPoolExecutor(workers, "llama-sample") if workers > 1 else None
        # Stop during a long decode: llama.cpp polls this between graph nodes (CPU backend) and aborts
        # the decode when every reply in the batch is stopped. It costs a GIL round trip a node, so it
        # is installed only for steps that are slow (a prompt chunk, or a slow machine).
        self._abort_cb = lc.ggml_abort_callback(self._abort_wanted)  # kept alive as long as the context
        self._abort_on = False
        self._in_batch: list[Reply] = []
        self._slow_step = False
        self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self._thread.start()

    # -- consumer side ---------------------------------------------------------------------
    def submit(self, reply: Reply) -> None:
        with self._cond:
            if self._closing:
                raise NotLoadedError("No model is loaded.")
            reply.joined_step = self.steps
            self._waiting.append(reply)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def running(self) -> int:
        """Replies being decoded now (each holds a slot)."""
        return self.pool.in_use()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)
        if self._samplers is not None:
            self._samplers.shutdown(wait=True)
        if self._abort_on:
            self._lc.llama_set_abort_callback(self._ctx, self._lc.ggml_abort_callback(), None)
        self._lc.llama_batch_free(self._batch)

    def exclusive(self, work: Generator):
        """Run ``work`` (a generator that uses the context) once no reply is decoding; replies that
        arrive meanwhile wait. It clears the KV cache, so every slot's prefix cache is forgotten."""
        with self._cond:
            self._paused = True
            while self._active:
                self._cond.wait(0.05)
        try:
            return (yield from work)
        finally:
            for slot in self.pool.slots:
                slot.tokens.clear()
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or (self._waiting and not self._paused) or self._active):
                    self._cond.wait()
                if self._closing:
                    for reply in list(self._waiting) + self._active:
                        self._fail(reply, NotLoadedError("The model was unloaded during this reply."))
                    return
                self._end_stopped()
                while self._waiting and not self._paused and self.pool.has_free():
                    self._admit(self._waiting.popleft())
            if not self._active:
                continue
            try:
                self._step()
            except Exception as exc:  # a reply's failure must never end the loop for the others
                for reply in list(self._active):
                    self._fail(reply, exc, clear_cache=True)

    def _end_stopped(self) -> None:
        for reply in [r for r in self._waiting if r.stopped()]:
            self._waiting.remove(reply)
            self._finish(reply, "cancelled")
        for reply in [r for r in self._active if r.stopped()]:
            self._finish(reply, "cancelled")

    def _admit(self, reply: Reply) -> None:
        slot, cached = self.pool.take(reply.tokens)
        if cached < len(slot.tokens) and not self._lc.llama_memory_seq_rm(self._mem, slot.seq_id, cached, -1):
            self._lc.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            cached = 0
        del slot.tokens[cached:]
        reply.slot, reply.cached = slot, cached
        self._active.append(reply)

    def _step(self) -> None:
        t_step = time.perf_counter()
        try:
            self._decode_and_sample()
        finally:
            self.times["steps"] += 1
            self.times["step_s"] += time.perf_counter() - t_step

    def _decode_and_sample(self) -> None:
        n = 0
        for reply in self._active:  # the running replies: one token each
            reply.idx, reply.chunk = -1, []
            if reply.pending is not None:
                self._put(n, reply.pending, len(reply.slot.tokens), reply.slot.seq_id, True)
                reply.idx, reply.chunk = n, [reply.pending]
                n += 1
        for reply in self._active:  # then prompt chunks, oldest reply first, up to n_batch
            done = len(reply.slot.tokens)
            if reply.pending is not None or done >= len(reply.tokens) or n >= self.n_batch:
                continue
            chunk = reply.tokens[done: done + self.n_batch - n]
            k = len(chunk)
            self._tok[n:n + k] = chunk
            self._pos[n:n + k] = range(done, done + k)
            self._out[n:n + k] = [0] * k
            for i in range(n, n + k):
                self._seq[i][0] = reply.slot.seq_id
            if done + k == len(reply.tokens):
                self._out[n + k - 1] = 1
                reply.idx = n + k - 1
            reply.chunk = chunk
            n += k
        self._batch.n_tokens = n
        self._in_batch = [r for r in self._active if r.chunk]
        self._set_abort(self._slow_step or n > ABORTABLE_TOKENS)
        t0 = time.perf_counter()
        rc = self._lc.llama_decode(self._ctx, self._batch)
        t1 = time.perf_counter()
        self.times["decode_s"] += t1 - t0
        self.times["batch_tokens"] += n
        self._slow_step = n <= ABORTABLE_TOKENS and t1 - t0 > SLOW_STEP_S
        self.steps += 1
        batch, self._in_batch = self._in_batch, []
        if rc == ABORTED:
            self.aborted += 1
            self._roll_back(batch)  # the stopped replies end before the next step
            return
        if rc != 0:
            failure = BackendError(self._describe_failure(rc))
            for reply in batch:
                self._fail(reply, failure, clear_cache=True)
            return
        for reply in batch:
            reply.slot.tokens.extend(reply.chunk)
        ready = [r for r in batch if r.idx >= 0]
        t2 = time.perf_counter()
        tokens = self._sample(ready)
        self.times["sample_s"] += time.perf_counter() - t2
        for reply, token in zip(ready, tokens):
            self._on_token(reply, token)

    def _sample(self, ready: list[Reply]) -> list[int]:
        ctx = self._ctx
        # numpy's argmax holds the GIL: threads would only add hand-offs (GPU run 3: 8 replies 460 vs
        # 525 tok/s in run 2 with them), so plain greedy replies are sampled in this thread.
        if self._samplers is None or len(ready) < 2 or all(r.sampler.plain_greedy for r in ready):
            return [r.sampler.sample(ctx, r.idx) for r in ready]
        # Wait for the decode and reorder its outputs here, once, so the threads only read the logits.
        self._lc.llama_get_logits_ith(ctx, ready[0].idx)
        return list(self._samplers.map(lambda r: r.sampler.sample(ctx, r.idx), ready))

    def _abort_wanted(self, _data) -> bool:
        try:
            batch = self._in_batch
            return bool(batch) and all(r.stopped() for r in batch)
        except Exception:  # never let an exception cross into C
            return False

    def _set_abort(self, on: bool) -> None:
        if on != self._abort_on:
            cb = self._abort_cb if on else self._lc.ggml_abort_callback()
            self._lc.llama_set_abort_callback(self._ctx, cb, None)
            self._abort_on = on

    def _roll_back(self, batch: list[Reply]) -> None:
        """After an aborted decode: each sequence's KV cache back to what its slot records (llama.cpp
        drops only the failed micro-batch; earlier ones of the same batch stayed)."""
        for reply in batch:
            slot = reply.slot
            if not self._lc.llama_memory_seq_rm(self._mem, slot.seq_id, len(slot.tokens), -1):
                self._lc.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.tokens.clear()
            reply.idx, reply.chunk = -1, []

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        self._tok[i], self._pos[i], self._out[i] = token, pos, logits
        self._seq[i][0] = seq

    def _on_token(self, reply: Reply, token: int) -> None:
        now = time.monotonic()
        reply.t_first = reply.t_first or now
        if reply.first_step is None:
            reply.first_step = self.steps
        reply.pending = None
        if self._lc.llama_vocab_is_eog(self._vocab, token):
            return self._finish(reply, "stop")
        reply.completion += 1
        reply.t_last = now
        p = reply.progress
        p.completion_tokens, p.first_token_at, p.last_token_at = reply.completion, reply.t_first, now
        text = reply.text.feed(self._piece(token))
        if reply.think.active:
            reply.think.feed(text)
        if reply.logprobs is not None:
            reply.logprobs.token(self._logprob(reply, token), len(text))
        delta = reply.stops.push(text)
        if delta:
            if reply.logprobs is not None and (entries := reply.logprobs.sent(len(delta))):
                reply.out.put(entries)
            reply.out.put(delta)
        if reply.stops.stopped:
            self._finish(reply, "stop")
        elif reply.completion >= reply.params.max_tokens:
            self._finish(reply, "length")
        elif len(reply.slot.tokens) + 1 >= self.n_ctx_seq:
            self._finish(reply, "context")
        else:
            reply.pending = token

    def _logprob(self, reply: Reply, token: int) -> tuple:
        """A copy of the reply's raw logits row (in place until the next decode) and the token: the
        log-softmax is left to the reply's consumer (``logprob_entries``), so the other replies in the
        batch wait for a copy of n_vocab floats, not for the arithmetic."""
        import numpy as np

        row = self._lc.llama_get_logits_ith(self._ctx, reply.idx)
        return np.ctypeslib.as_array(row, shape=(reply.sampler.n_vocab,)).copy(), token

    def logprob_entries(self, raw: list[tuple], top_n: int) -> list:
        """``TokenLogprob`` entries from ``_logprob``'s copies; runs in the reply's consumer thread."""
        return [token_logprob(row, len(row), token, top_n, self.piece) for row, token in raw]

    def piece(self, token: int) -> bytes:
        """A token's text for any thread (the decode thread's ``_piece`` reuses one buffer)."""
        piece = self._pieces.get(token)
        return piece if piece is not None else self._piece(token, ctypes.create_string_buffer(256))

    def _piece(self, token: int, buf=None) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            lc, buf = self._lc, buf or self._piece_buf
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    # -- ending a reply ------------------------------------------------------------------------
    def _release(self, reply: Reply, clear_cache: bool = False) -> None:
        if reply in self._active:
            self._active.remove(reply)
        if reply.slot is not None:
            if clear_cache:
                self._lc.llama_memory_seq_rm(self._mem, reply.slot.seq_id, -1, -1)
                reply.slot.tokens.clear()
            self.pool.release(reply.slot)
        reply.sampler.close()
        reply.done = True

    def _finish(self, reply: Reply, reason: str) -> None:
        tail = reply.stops.push(reply.text.flush()) + reply.stops.flush()
        if reply.slot is not None:
            self.history.append(ReplyRecord(reply.slot.seq_id, len(reply.tokens), reply.cached, reply.joined_step,
                                            reply.first_step, self.steps, reason))
        entries = reply.logprobs.end(len(tail), reply.stops.stopped) if reply.logprobs is not None else None
        self._release(reply)
        if entries:
            reply.out.put(entries)
        if tail:
            reply.out.put(tail)
        reply.out.put(reply_stats(reply.progress.started, len(reply.tokens), self.n_ctx_seq, reason,
                                  reply.completion, reply.t_first, reply.t_last, reply.cached, reply.think.tokens))

    def _fail(self, reply: Reply, exc: BaseException, clear_cache: bool = False) -> None:
        if reply in self._waiting:
            self._waiting.remove(reply)
        self._release(reply, clear_cache)
        reply.out.put(exc)
