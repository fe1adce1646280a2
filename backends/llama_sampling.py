"""One reply's sampler chain, built once from its ``SamplingOptions`` and run in C by
``llama_sampler_sample`` (which reads the logits in place and accepts the token it picks).

The chain mirrors llama-cpp-python's ``Llama._init_sampler`` (penalties, then greedy at temperature
0, else top-k, typical, top-p, min-p, temperature and a seeded draw), so replies did not change when
the engine stopped using the ``Llama`` class. OpenAI's presence/frequency penalties are a second
penalties sampler over a longer window, and a grammar (GBNF, or one made from a JSON schema by
llama-cpp-python's converter) restricts the candidates before any other step.
"""
from __future__ import annotations

import random
from typing import Callable

from backends.base import UnsupportedRequestError
from core.options import SamplingOptions

PENALTY_LAST_N = 64  # the window llama-cpp-python's Llama used (last_n_tokens_size)
OPENAI_PENALTY_LAST_N = 4096  # presence/frequency count the whole reply (OpenAI); a reply this long is rare


def grammar_text(params: SamplingOptions) -> str:
    """The GBNF grammar a reply must follow ("" for free text); a JSON schema is converted here."""
    if params.grammar.strip():
        return params.grammar
    if not params.json_schema.strip():
        return ""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(params.json_schema)
    except Exception as exc:  # the converter raises plain Exceptions for what it cannot express
        raise UnsupportedRequestError(f"This JSON schema cannot be turned into a grammar: {exc}") from None


def _grammar(vocab, text: str):
    import llama_cpp as lc

    sampler = lc.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
    if not sampler:  # llama.cpp logs the parse error and returns NULL
        raise UnsupportedRequestError("The grammar could not be parsed (GBNF with a 'root' rule expected).")
    return sampler


def _steps(params: SamplingOptions, n_vocab: int, seed: int, vocab=None) -> list[Callable[[], object]]:
    import llama_cpp as lc

    steps: list[Callable[[], object]] = [
        lambda: lc.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0)]
    if params.presence_penalty or params.frequency_penalty:
        steps.append(lambda: lc.llama_sampler_init_penalties(n_vocab, OPENAI_PENALTY_LAST_N, 1.0,
                                                             params.frequency_penalty, params.presence_penalty))
    grammar = grammar_text(params)
    if grammar:
        if vocab is None:
            raise UnsupportedRequestError("A grammar needs the model's vocabulary.")
        steps.append(lambda: _grammar(vocab, grammar))
    if params.temperature == 0.0:
        steps.append(lc.llama_sampler_init_greedy)
        return steps
    steps += [lambda: lc.llama_sampler_init_top_k(params.top_k),
              lambda: lc.llama_sampler_init_typical(1.0, 1),
              lambda: lc.llama_sampler_init_top_p(params.top_p, 1),
              lambda: lc.llama_sampler_init_min_p(params.min_p, 1),
              lambda: lc.llama_sampler_init_temp(params.temperature),
              lambda: lc.llama_sampler_init_dist(seed)]
    return steps


class SamplerChain:
    """Owns a ``llama_sampler`` chain; ``close`` frees it (also safe to call twice)."""

    def __init__(self, params: SamplingOptions, n_vocab: int, vocab=None) -> None:
        import llama_cpp as lc

        self._lc = lc
        seed = params.seed if params.seed is not None else random.randrange(2**32 - 1)
        steps = _steps(params, n_vocab, seed, vocab)  # a bad grammar or schema is refused before any allocation
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            for make in steps:
                lc.llama_sampler_chain_add(self.chain, make())  # the chain owns and frees its samplers
        except BaseException:
            self.close()
            raise
        self.sample_fn = lc.llama_sampler_sample
        self.n_vocab = n_vocab
        # Greedy with no penalty and no grammar: the chain's answer never depends on its history, and
        # llama.cpp's greedy picks the first largest logit, as numpy's argmax does. An argmax over the
        # logits in place skips building the n_vocab candidate array a token (~0.3 ms at a 128k vocab).
        self.plain_greedy = (params.temperature == 0.0 and params.repeat_penalty == 1.0
                             and not params.presence_penalty and not params.frequency_penalty
                             and not params.grammar.strip() and not params.json_schema.strip())

    def sample(self, ctx, idx: int) -> int:
        """The token for the logits of output ``idx`` of the last decoded batch."""
        if self.plain_greedy:
            import numpy as np

            ptr = self._lc.llama_get_logits_ith(ctx, idx)
            if ptr:
                return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))
        return self.sample_fn(self.chain, ctx, idx)

    def close(self) -> None:
        if self.chain is not None:
            self._lc.llama_sampler_free(self.chain)
            self.chain = None
