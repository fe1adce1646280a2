"""The quality check: perplexity in fixed windows, as llama.cpp's ``perplexity`` tool computes it,
and the KL divergence and top-1 agreement of a model's token distributions against a reference.

Windows (llama.cpp ``perplexity``, default mode): the text is tokenised once (BOS added when the
vocabulary asks for it); window i is tokens [i*n_ctx, (i+1)*n_ctx) with its first token replaced
by BOS (when the vocabulary adds one), evaluated from an empty cache; only the second half is
scored: the logits at positions n_ctx/2 .. n_ctx-2 predict the tokens after them (n_ctx/2 - 1
tokens per window), so every scored token has at least n_ctx/2 tokens of context.

The heavy part (a log-softmax over the vocabulary per position) runs in the worker
(``backends.text_scoring``); it sends one ``WindowScore`` of sums per window and this module
turns them into figures. The reference's distributions travel as its top-k tokens per position;
KL is computed over those k tokens plus the rest as one bin, which is exact for identical
distributions (0) and otherwise a lower bound of the full KL.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from pydantic import Field

from core.options import _Options

MIN_WINDOW = 32


class QualityError(ValueError):
    """A quality run that cannot be done; the message is for the user."""


class QualityOptions(_Options):
    """How the quality check measures (the same settings make results comparable)."""

    window: int = Field(
        512, ge=MIN_WINDOW, le=32768, title="Window (tokens)",
        description="Tokens per window (llama.cpp perplexity's -c); the second half of each is scored.",
        json_schema_extra={"cli": "--window", "step": 64},
    )
    batch: int = Field(
        512, ge=16, le=8192, title="Batch",
        description="Tokens evaluated per step inside a window (llama.cpp perplexity's -b); Stop is checked between windows.",
        json_schema_extra={"cli": "--quality-batch", "step": 16},
    )
    max_windows: Optional[int] = Field(
        None, ge=1, le=10000, title="Windows",
        description="Score only the first N windows (llama.cpp perplexity's --chunks). Empty = all.",
        json_schema_extra={"cli": "--windows", "step": 1, "empty": "all"},
    )
    top_k: int = Field(
        64, ge=1, le=1024, title="Reference top-k",
        description="Tokens of the reference's distribution kept per position for the KL divergence.",
        json_schema_extra={"cli": "--ref-top-k", "step": 1},
    )


def prepare_text(text: str) -> str:
    """The text as llama.cpp's ``-f`` reads it: one trailing newline dropped."""
    return text[:-1] if text.endswith("\n") else text


def window_starts(n_tokens: int, opts: QualityOptions) -> list[int]:
    """Where each full window starts; at least two windows' worth of tokens are needed."""
    if n_tokens < 2 * opts.window:
        raise QualityError(f"The text has {n_tokens} tokens; a window of {opts.window} needs at least "
                           f"{2 * opts.window}. Use a smaller window.")
    n = n_tokens // opts.window
    if opts.max_windows is not None:
        n = min(n, opts.max_windows)
    return [i * opts.window for i in range(n)]


def first_scored(window: int) -> int:
    return window // 2


def window_tokens(tokens: list[int], start: int, window: int, bos: Optional[int]) -> list[int]:
    """The tokens a window evaluates: BOS first when the vocabulary adds one."""
    chunk = list(tokens[start:start + window])
    if bos is not None:
        chunk[0] = bos
    return chunk


def scored_targets(chunk: list[int]) -> list[int]:
    """The tokens the scored positions predict (positions first..n-2 predict tokens first+1..n-1)."""
    return chunk[first_scored(len(chunk)) + 1:]


@dataclass(frozen=True)
class WindowScore:
    """Sums over the scored positions of one window."""
    index: int
    count: int
    nll_sum: float
    nll2_sum: float
    kl_sum: float = 0.0
    kl2_sum: float = 0.0
    same_top: int = 0
    compared: int = 0   # positions compared with a reference (0 without one)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def mean_and_error(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean and its standard error, the way llama.cpp's tool reports them."""
    if count <= 0:
        return math.nan, math.nan
    mean = total / count
    var = total2 / count - mean * mean
    return mean, (math.sqrt(var / (count - 1)) if count > 1 and var > 0 else 0.0)


@dataclass(frozen=True)
class QualityResult:
    model: str                 # file name of the model measured
    text_sha256: str
    options: dict
    n_tokens: int              # tokens of the whole text
    windows_total: int
    windows_done: int
    scored_tokens: int
    ppl: float
    ppl_error: float
    complete: bool             # every planned window measured (a stopped run is not)
    seconds: float
    reference: str = ""        # file name of the reference, "" without one
    kl_mean: Optional[float] = None
    kl_error: Optional[float] = None
    top1: Optional[float] = None
    top1_error: Optional[float] = None
    reference_ppl: Optional[float] = None
    backend: str = ""
    measured_at: str = ""
    windows: tuple[WindowScore, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["windows"] = [w.to_dict() for w in self.windows]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "QualityResult":
        data = dict(data)
        data["windows"] = tuple(WindowScore(**w) for w in data.get("windows", ()))
        return cls(**data)

    @property
    def seconds_per_1000_tokens(self) -> Optional[float]:
        evaluated = self.windows_done * self.options.get("window", 0)
        return 1000 * self.seconds / evaluated if evaluated and self.seconds else None

    @property
    def ppl_change(self) -> Optional[float]:
        """Perplexity relative to the reference's, in percent."""
        if self.reference_ppl is None or not self.reference_ppl or math.isnan(self.ppl):
            return None
        return 100.0 * (self.ppl / self.reference_ppl - 1.0)


def summarise(windows: list[WindowScore], *, model: str, text_sha256: str, opts: QualityOptions,
              n_tokens: int, windows_total: int, seconds: float, reference: str = "",
              reference_ppl: Optional[float] = None, backend: str = "", measured_at: str = "") -> QualityResult:
    count = sum(w.count for w in windows)
    nll, nll_err = mean_and_error(sum(w.nll_sum for w in windows), sum(w.nll2_sum for w in windows), count)
    ppl = math.exp(nll) if count else math.nan
    compared = sum(w.compared for w in windows)
    kl = kl_err = top1 = top1_err = None
    if reference and compared:
        kl, kl_err = mean_and_error(sum(w.kl_sum for w in windows), sum(w.kl2_sum for w in windows), compared)
        top1 = sum(w.same_top for w in windows) / compared
        top1_err = math.sqrt(top1 * (1 - top1) / (compared - 1)) if compared > 1 else 0.0
    return QualityResult(
        model=model, text_sha256=text_sha256, options=opts.model_dump(), n_tokens=n_tokens,
        windows_total=windows_total, windows_done=len(windows), scored_tokens=count, ppl=ppl,
        ppl_error=ppl * nll_err if count else math.nan, complete=len(windows) == windows_total and count > 0,
        seconds=round(seconds, 3), reference=reference, kl_mean=kl, kl_error=kl_err, top1=top1,
        top1_error=top1_err, reference_ppl=reference_ppl, backend=backend, measured_at=measured_at,
        windows=tuple(windows))


def check_same_vocabulary(model: str, model_vocab: tuple[int, str], reference: str,
                          ref_vocab: tuple[int, str]) -> None:
    """``*_vocab`` = (vocabulary size, sha256 of the text's token ids). KL compares distributions
    token by token, so both models must split the text into the same tokens over the same vocabulary."""
    if model_vocab[0] != ref_vocab[0]:
        raise QualityError(f"{model} has a vocabulary of {model_vocab[0]} tokens and {reference} one of "
                           f"{ref_vocab[0]}: they are not the same model family, so KL divergence against it "
                           "means nothing. Pick a reference of the same model (f16/bf16 or Q8_0).")
    if model_vocab[1] != ref_vocab[1]:
        raise QualityError(f"{model} and {reference} split the text into different tokens (their tokenizers "
                           "differ): they are not the same model family. Pick a reference of the same model.")


def describe(result: QualityResult, label: str = "") -> str:
    """One line, e.g. ``Q4_K_M: PPL 7.41 ± 0.12, +3.2 % vs Q8_0 (KL 0.0123, top-1 95.1 %)``."""
    head = f"{label}: " if label else ""
    if not result.scored_tokens:
        return f"{head}no window measured"
    text = f"{head}PPL {result.ppl:.2f} ± {result.ppl_error:.2f}"
    change = result.ppl_change
    if change is not None:
        text += f", {change:+.1f} % vs {result.reference}"
    if result.kl_mean is not None:
        text += f" (KL {result.kl_mean:.4f}, top-1 {100 * result.top1:.1f} %)"
    if not result.complete:
        text += f" — stopped after {result.windows_done}/{result.windows_total} windows"
    return text


def short_summary(result: QualityResult) -> str:
    """For tables: ``PPL 7.41`` or ``PPL 7.41, +3.2 % vs Q8_0``."""
    text = f"PPL {result.ppl:.2f}"
    change = result.ppl_change
    if change is not None:
        text += f", {change:+.1f} % vs {quant_label(result.reference)}"
    return text


def quant_label(file_name: str) -> str:
    """``Llama-3-8B.Q8_0.gguf`` -> ``Q8_0``; other names are kept whole."""
    stem = file_name.rsplit("/", 1)[-1].removesuffix(".gguf")
    for sep in (".", "-"):
        tail = stem.rsplit(sep, 1)[-1]
        if tail[:1] in ("Q", "q", "F", "f", "B", "b", "I", "i") and any(c.isdigit() for c in tail) and len(tail) <= 10:
            return tail.upper()
    return stem
