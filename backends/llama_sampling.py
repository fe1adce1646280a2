"""One reply's sampler chain, built once from its ``SamplingOptions`` and run in C by
``llama_sampler_sample`` (which reads the logits in place and accepts the token it picks).

The chain mirrors llama-cpp-python's ``Llama._init_sampler`` (penalties, then greedy at temperature
0, else top-k, typical, top-p, min-p, temperature and a seeded draw), so replies did not change when
the engine stopped using the ``Llama`` class. More samplers (presence/frequency penalties, a grammar,
logprobs) are added as steps in ``_steps``.
"""
from __future__ import annotations

import random
from typing import Callable

from core.options import SamplingOptions

PENALTY_LAST_N = 64  # the window llama-cpp-python's Llama used (last_n_tokens_size)


def _steps(params: SamplingOptions, n_vocab: int, seed: int) -> list[Callable[[], object]]:
    import llama_cpp as lc

    steps: list[Callable[[], object]] = [
        lambda: lc.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0)]
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

    def __init__(self, params: SamplingOptions, n_vocab: int) -> None:
        import llama_cpp as lc

        self._lc = lc
        seed = params.seed if params.seed is not None else random.randrange(2**32 - 1)
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        for make in _steps(params, n_vocab, seed):
            lc.llama_sampler_chain_add(self.chain, make())  # the chain owns and frees its samplers
        self.sample_fn = lc.llama_sampler_sample

    def sample(self, ctx, idx: int) -> int:
        """The token for the logits of output ``idx`` of the last decoded batch."""
        return self.sample_fn(self.chain, ctx, idx)

    def close(self) -> None:
        if self.chain is not None:
            self._lc.llama_sampler_free(self.chain)
            self.chain = None
