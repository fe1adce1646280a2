"""Issue 14: what the worker path (ModelManager -> worker process -> BatchLoop) costs a decode step,
against the same BatchLoop driven in this process, N replies at once, in alternating rounds.

    .venv/bin/python bench/worker_vs_inprocess.py [--model GGUF] [--replies 8] [--threads 2] [--rounds 3]

Time per step = each reply's time from its first to its last text over its tokens after the first
(median over the replies). Each path runs a warm-up round first, so both reuse their slots' prefix
caches the same way. On a GPU this tells the loop's own cost from the worker's threads and messages;
on CPU-2 the decode itself dominates and other processes' noise is large (BENCHMARKS, issue 14)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import LoadSpec  # noqa: E402
from backends.llama_cpp_engine import LlamaCppEngine  # noqa: E402
from backends.manager import ModelManager  # noqa: E402
from bench.gpu_parallel import make_prompt  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from services.paths import embedded_model_path  # noqa: E402


def ms_per_step(stream_chat, prompts: list[str], params: SamplingOptions) -> float:
    rows: list[tuple] = [()] * len(prompts)

    def run(i: int) -> None:
        stream = stream_chat(prompts[i], params, threading.Event())
        first = None
        for _ in stream:
            first = first or time.perf_counter()
        rows[i] = (first, time.perf_counter(), stream.stats.completion_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return statistics.median((end - first) / (n - 1) * 1000 for first, end, n in rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(embedded_model_path()))
    ap.add_argument("--replies", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=60)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--gpu-layers", type=int, default=-1)
    a = ap.parse_args()
    opts = LoadOptions(n_ctx=512 * ((a.prompt_tokens + a.tokens) // 512 + 1), n_threads=a.threads, n_batch=512,
                       n_gpu_layers=a.gpu_layers, flash_attn=True, parallel=a.replies)
    probe = LlamaCppEngine()
    probe._log._echo = None
    probe.load(LoadSpec(a.model, opts.model_copy(update={"parallel": 1})))
    prompts = [make_prompt(probe, a.prompt_tokens, salt) for salt in range(a.replies)]
    probe.unload()
    params = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=a.tokens, seed=1)
    results: dict[str, list[float]] = {"in_process": [], "worker": []}
    for _ in range(a.rounds):
        engine = LlamaCppEngine()
        engine._log._echo = None
        engine.load(LoadSpec(a.model, opts))
        ms_per_step(engine.stream_chat, prompts, params)  # warm-up: the slots' prefix caches
        results["in_process"].append(ms_per_step(engine.stream_chat, prompts, params))
        engine.unload()
        manager = ModelManager(max_waiting=16)
        manager.load(LoadSpec(a.model, opts))
        ms_per_step(manager.stream_chat, prompts, params)
        results["worker"].append(ms_per_step(manager.stream_chat, prompts, params))
        manager.close()
    ratio = statistics.median(results["worker"]) / statistics.median(results["in_process"])
    print(json.dumps({"replies": a.replies, "threads": a.threads, "tokens": a.tokens,
                      "ms_per_step": {k: [round(x, 2) for x in v] for k, v in results.items()},
                      "worker_over_in_process": round(ratio, 3),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
