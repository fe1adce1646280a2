"""The quality check inside the worker: logits of every scored position of each window, their
log-softmax, and the per-window sums ``core.quality`` turns into perplexity, KL and top-1 agreement.

Engines provide two small functions (``tokenize`` and ``window_logits``); everything else is
shared, so llama.cpp and transformers are scored by the same code.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np

from core.quality import (QualityError, QualityOptions, WindowScore, check_same_vocabulary, first_scored,
                          prepare_text, scored_targets, window_starts, window_tokens)

_ROWS = 32  # log-softmax this many positions at a time (float64 over a 128k vocabulary: 32 MiB)


@dataclass(frozen=True)
class TextTokens:
    tokens: list[int]
    bos: Optional[int]     # the token each window starts with, None when the vocabulary adds no BOS
    n_vocab: int

    @property
    def vocab_key(self) -> tuple[int, str]:
        """(vocabulary size, sha256 of the token ids): equal for models that split the text alike."""
        digest = hashlib.sha256(np.asarray(self.tokens, dtype=np.int64).tobytes()).hexdigest()
        return self.n_vocab, digest


@dataclass(frozen=True)
class Reference:
    """The reference model's distributions: per window, its top-k token ids and log-probabilities
    at every scored position (arrays of shape (positions, k), best first)."""
    name: str
    vocab: tuple[int, str]
    windows: list[tuple[np.ndarray, np.ndarray]]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """In float32 (half the memory traffic of float64; sums over the vocabulary in float64)."""
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return x


def score_logits(index: int, logits: np.ndarray, targets: list[int], top_k: int,
                 ref: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[WindowScore, np.ndarray, np.ndarray]:
    """Sums for one window from its scored positions' logits (positions x vocabulary), and this
    model's top-k per position (to serve as a reference later; ``top_k=0``: not needed)."""
    n = len(targets)
    if logits.shape[0] != n:
        raise ValueError(f"{logits.shape[0]} rows of logits for {n} targets")
    k = min(top_k, logits.shape[1])
    nll_sum = nll2_sum = kl_sum = kl2_sum = 0.0
    same_top = 0
    top_ids = np.empty((n, k), dtype=np.int32)
    top_lps = np.empty((n, k), dtype=np.float32)
    target_arr = np.asarray(targets, dtype=np.int64)
    for lo in range(0, n, _ROWS):
        hi = min(n, lo + _ROWS)
        lp = log_softmax(logits[lo:hi])
        rows = np.arange(hi - lo)
        nll = -lp[rows, target_arr[lo:hi]].astype(np.float64)
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        if k:
            part = (np.argpartition(-lp, k - 1, axis=1)[:, :k] if k < lp.shape[1]
                    else np.tile(np.arange(k), (hi - lo, 1)))
            part_lp = np.take_along_axis(lp, part, axis=1)
            order = np.argsort(-part_lp, axis=1, kind="stable")
            top_ids[lo:hi] = np.take_along_axis(part, order, axis=1)
            top_lps[lo:hi] = np.take_along_axis(part_lp, order, axis=1)
        if ref is not None:
            ref_ids, ref_lps = ref[0][lo:hi].astype(np.int64), ref[1][lo:hi].astype(np.float64)
            kl = _kl_top_k(ref_lps, np.take_along_axis(lp, ref_ids, axis=1))
            kl_sum += float(kl.sum())
            kl2_sum += float((kl * kl).sum())
            # the reference's top token is (one of) this model's top tokens: ties count as agreement
            same_top += int((lp[rows, ref_ids[:, 0]] >= lp.max(axis=1)).sum())
    return (WindowScore(index, n, nll_sum, nll2_sum, kl_sum, kl2_sum, same_top, n if ref is not None else 0),
            top_ids, top_lps)


def _kl_top_k(ref_lp: np.ndarray, model_lp: np.ndarray) -> np.ndarray:
    """KL(reference || model) over the reference's top-k tokens plus everything else as one bin."""
    ref_lp, model_lp = ref_lp.astype(np.float64), model_lp.astype(np.float64)
    p = np.exp(ref_lp)
    kl = (p * (ref_lp - model_lp)).sum(axis=1)
    p_rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    q_rest = np.clip(1.0 - np.exp(model_lp).sum(axis=1), 1e-30, 1.0)
    rest = np.where(p_rest > 1e-12, p_rest * (np.log(np.maximum(p_rest, 1e-300)) - np.log(q_rest)), 0.0)
    return np.maximum(kl + rest, 0.0)  # rounding can give -1e-17 for identical distributions


@dataclass(frozen=True)
class ScoreStart:
    n_tokens: int
    windows_total: int
    vocab: tuple[int, str]


@dataclass(frozen=True)
class ScoredWindow:
    score: WindowScore
    top_ids: np.ndarray
    top_lps: np.ndarray


def score_text(text: str, opts: QualityOptions, tokenize: Callable[[str], TextTokens],
               window_logits: Callable[[list[int], int], np.ndarray], cancel: threading.Event,
               ref: Optional[Reference] = None, model_name: str = "this model", keep_top: bool = False
               ) -> Generator[ScoreStart | ScoredWindow, None, bool]:
    """Yields a ScoreStart, then one ScoredWindow per window (with this model's top-k per position
    when ``keep_top``: it is measured as a reference); returns True when every window ran, False
    when ``cancel`` stopped it (what was measured has been yielded)."""
    tokenized = tokenize(prepare_text(text))
    starts = window_starts(len(tokenized.tokens), opts)
    if ref is not None:
        check_same_vocabulary(model_name, tokenized.vocab_key, ref.name, ref.vocab)
        if len(ref.windows) < len(starts):
            raise QualityError(f"The reference {ref.name} was measured on {len(ref.windows)} windows; this run "
                               f"needs {len(starts)}. Measure both with the same settings.")
    yield ScoreStart(len(tokenized.tokens), len(starts), tokenized.vocab_key)
    first = first_scored(opts.window)
    for i, start in enumerate(starts):
        if cancel.is_set():
            return False
        began = time.monotonic()
        chunk = window_tokens(tokenized.tokens, start, opts.window, tokenized.bos)
        logits = window_logits(chunk, first)
        if logits is None:  # stopped between batches
            return False
        score, ids, lps = score_logits(i, logits, scored_targets(chunk), opts.top_k if keep_top else 0,
                                       ref.windows[i] if ref is not None else None)
        score = WindowScore(**{**score.to_dict(), "seconds": round(time.monotonic() - began, 4)})
        yield ScoredWindow(score, ids, lps)
    return True


# -- llama.cpp -----------------------------------------------------------------------------

def llama_tokenize(llm, text: str) -> TextTokens:
    """As llama.cpp's perplexity tool: special tokens added as the vocabulary says, none parsed."""
    import llama_cpp

    vocab = llm._model.vocab
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    return TextTokens(tokens, int(llama_cpp.llama_vocab_bos(vocab)) if add_bos else None,
                      int(llama_cpp.llama_vocab_n_tokens(vocab)))


def llama_window_logits(llm, chunk: list[int], first: int, n_batch: int,
                        cancel: Optional[threading.Event] = None) -> Optional[np.ndarray]:
    """Evaluate one window from an empty cache in batches of ``n_batch``; the logits of positions
    first..len-2 (the ones that predict a scored token). None when cancelled between batches."""
    import llama_cpp

    ctx = llm._ctx.ctx
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(llm._model.vocab))
    n_batch = min(n_batch, llm.n_batch)
    llm._ctx.kv_cache_clear()
    llm.n_tokens = 0  # the chat's prefix cache is gone: the next reply evaluates its prompt afresh
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    rows: list[np.ndarray] = []
    try:
        for lo in range(0, len(chunk), n_batch):
            if cancel is not None and cancel.is_set():
                return None
            part = chunk[lo:lo + n_batch]
            batch.n_tokens = len(part)
            n_out = 0
            for k, token in enumerate(part):
                pos = lo + k
                want = first <= pos <= len(chunk) - 2
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = want
                n_out += want
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            if n_out:
                out = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n_out * n_vocab,))
                rows.append(out.reshape(n_out, n_vocab).copy())
    finally:
        llama_cpp.llama_batch_free(batch)
        llm._ctx.kv_cache_clear()
    return np.concatenate(rows) if rows else np.empty((0, n_vocab), dtype=np.float32)


# -- transformers --------------------------------------------------------------------------

def hf_tokenize(tokenizer, model, bos_id: Optional[int], text: str) -> TextTokens:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if bos_id is not None:
        ids = [bos_id] + ids
    n_vocab = int(model.get_output_embeddings().weight.shape[0])
    return TextTokens(list(ids), bos_id, n_vocab)


def hf_window_logits(model, device, chunk: list[int], first: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        ids = torch.tensor([chunk], device=device)
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(chunk) - first).logits[0]
        return logits[:-1].float().cpu().numpy()
