"""Per-token log-probabilities of a llama.cpp reply (OpenAI's ``logprobs``/``top_logprobs``).

They are a log-softmax over the whole vocabulary of the raw logits of the reply's own output row,
before any sampler step (penalties, grammar, temperature), which is what OpenAI and llama.cpp's
server report. Only replies that ask for them pay for them: the decode thread copies the row (n_vocab
floats), and the reply's consumer thread computes the log-softmax and the top tokens from the copy.

``LogprobText`` keeps the entries in step with the text the reply sends: an entry goes out with the
delta that carries its token's text, so text held back (an incomplete character, a possible stop
string) holds back its entries too, and tokens that only make up a stop string are never reported.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable

from backends.base import TokenLogprob


def token_logprob(logits, n_vocab: int, token: int, top_n: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """``logits``: a pointer to (or array of) the row's n_vocab float logits."""
    import numpy as np

    x = np.ctypeslib.as_array(logits, shape=(n_vocab,)) if not isinstance(logits, np.ndarray) else logits
    peak = float(x.max())
    log_z = peak + math.log(float(np.exp(x - peak).sum(dtype=np.float64)))
    top: tuple[tuple[bytes, float], ...] = ()
    n = min(top_n, n_vocab)
    if n > 0:
        ids = np.argpartition(x, n_vocab - n)[n_vocab - n:] if n < n_vocab else np.arange(n_vocab)
        ids = sorted(ids.tolist(), key=lambda i: (-x[i], i))  # most likely first; ties by id, as argmax
        top = tuple((piece(i), float(x[i]) - log_z) for i in ids)
    return TokenLogprob(piece(token), float(x[token]) - log_z, top)


class LogprobText:
    """One reply's entries waiting for their text to be sent."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, int, TokenLogprob]] = deque()  # (first char, end char, entry)
        self._decoded = 0  # characters the reply's tokens have made so far
        self._sent = 0     # characters sent

    def token(self, entry: TokenLogprob, n_chars: int) -> None:
        """A token whose piece completed ``n_chars`` characters of text."""
        self._pending.append((self._decoded, self._decoded + n_chars, entry))
        self._decoded += n_chars

    def sent(self, n_chars: int) -> list[TokenLogprob]:
        """``n_chars`` more characters went out: the entries whose text is now all sent."""
        self._sent += n_chars
        out = []
        while self._pending and self._pending[0][1] <= self._sent:
            out.append(self._pending.popleft()[2])
        return out

    def end(self, n_chars: int, stopped: bool) -> list[TokenLogprob]:
        """The reply ends after a last ``n_chars``: every remaining entry, or, when a stop string cut the
        text, those whose token gave some of the text that was sent."""
        out = self.sent(n_chars)
        while self._pending and (not stopped or self._pending[0][0] < self._sent):
            out.append(self._pending.popleft()[2])
        self._pending.clear()
        return out
