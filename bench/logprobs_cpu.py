"""What logprobs cost, and whom (issue 12): the decode thread only copies the asking reply's logits row;
the log-softmax and top tokens run in that reply's consumer thread.

1. Per token: a row copy (what every reply in the batch waits for) beside the log-softmax + top-k (what
   only the asking reply's consumer pays), medians over 200, for the embedded model's vocabulary and a
   152k one (Qwen-sized).
2. End to end, in-process engine with 4 slots on the embedded model: the decode speed of 3 plain greedy
   replies running beside a 4th plain one, and beside a 4th that asks for logprobs with 20 top tokens,
   alternated ``--rounds`` times in one run (ratios side by side).

    .venv/bin/python bench/logprobs_cpu.py [--rounds 3] [--tokens 48]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from backends.base import LoadSpec  # noqa: E402
from backends.llama_cpp_engine import LlamaCppEngine  # noqa: E402
from backends.llama_logprobs import token_logprob  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from services.paths import embedded_model_path  # noqa: E402

PROMPTS = ["Name three colours.", "Count from one to ten.", "Write a haiku about the sea.", "Describe a cat."]


def per_token() -> dict:
    out = {}
    for n in (49152, 151936):
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        copies, fulls = [], []
        for _ in range(200):
            t = time.perf_counter()
            x.copy()
            copies.append(time.perf_counter() - t)
            t = time.perf_counter()
            token_logprob(x, n, 7, 20, lambda i: b"x")
            fulls.append(time.perf_counter() - t)
        out[n] = {"row_copy_us": round(statistics.median(copies) * 1e6, 1),
                  "logsoftmax_top20_us": round(statistics.median(fulls) * 1e6, 1)}
    return out


def batch(engine, tokens: int, asking: bool) -> float:
    params = SamplingOptions(temperature=0.0, max_tokens=tokens, seed=1, repeat_penalty=1.0)
    streams = [engine.stream_chat([{"role": "user", "content": p}], params, threading.Event(),
                                  **({"logprobs": 20} if asking and i == 3 else {})) for i, p in enumerate(PROMPTS)]
    threads = [threading.Thread(target=lambda s=s: [s.logprobs.take() for _ in s]) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statistics.median(s.stats.decode_tokens_per_s for s in streams[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    result = {"per_token": per_token()}
    engine = LlamaCppEngine()
    engine._log._echo = None
    engine.load(LoadSpec(str(embedded_model_path()), LoadOptions(n_ctx=512, parallel=4)))
    batch(engine, 8, False)  # warm-up
    plain, beside = [], []
    for _ in range(args.rounds):
        plain.append(batch(engine, args.tokens, False))
        beside.append(batch(engine, args.tokens, True))
    engine.unload()
    result["others_tok_s"] = {"beside_plain": [round(v, 1) for v in plain],
                              "beside_logprobs20": [round(v, 1) for v in beside],
                              "ratio_median": round(statistics.median(beside) / statistics.median(plain), 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
