"""CPU benchmark of the OpenAI-compatible API (issue 7).

    .venv/bin/python bench/api_cpu.py [--runs 6] [--max-tokens 256] [--out FILE]

1. One client: decode tokens/s and time to first token of a streamed chat through /v1 (SSE),
   through the UI's /send (Gradio SSE) and through raw llama-cpp-python, interleaved, same prompts.
2. 1, 4 and 8 concurrent API clients, each sending --requests streamed chats of 64 tokens: total
   throughput (completion tokens per second of wall time) and p50/p95 request latency. Requests
   are served one at a time (one model), so latency grows with the queue while throughput holds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_cpu import (OTHER_PROMPT, PROMPTS, _client, _sse_chat, app_endpoint, keep_alive_client,  # noqa: E402
                            other_conversation_raw, raw_chat_once, start_app, stop_app)
from services.cpu import physical_cores  # noqa: E402
from services.paths import embedded_model_path  # noqa: E402


def api_stream(base_url: str, prompt: str, max_tokens: int, client=None) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with (client or _client()).stream("POST", base_url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    end = time.perf_counter()
    return {"ttft_s": (first or end) - start, "tokens_per_s": (tokens - 1) / (last - first) if first and last > first else 0,
            "tokens": tokens, "latency_s": end - start}


def concurrent_streams(base_url: str, clients: int, requests: int, max_tokens: int) -> tuple[list[dict], list[str], float]:
    """`clients` threads, each on its own keep-alive connection, send `requests` streamed chats
    one after another; returns the rows of api_stream, the errors (counted, not raised) and
    the wall time of the whole run."""
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        client = keep_alive_client()  # each concurrent client has its own connection
        for j in range(requests):
            try:
                row = api_stream(base_url, PROMPTS[(i * requests + j) % len(PROMPTS)], max_tokens, client)
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                results.append(row)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, time.perf_counter() - start


def concurrency(base_url: str, clients: int, requests: int) -> dict:
    results, errors, wall = concurrent_streams(base_url, clients, requests, 64)
    latencies = sorted(r["latency_s"] for r in results)
    return {"clients": clients, "requests": len(results), "errors": errors,
            "throughput_tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "p50_latency_s": statistics.median(latencies),
            "p95_latency_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--requests", type=int, default=6, help="per client, in the concurrency runs")
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    from llama_cpp import Llama

    port = 7950 + os.getpid() % 40
    proc, _ = start_app(port, tempfile.mkdtemp(prefix="fitchat-api-bench-"), a.threads, 2048)
    base, fn_index = app_endpoint(port)
    url = f"http://127.0.0.1:{port}"
    llm = Llama(str(embedded_model_path()), n_ctx=2048, n_threads=a.threads, n_threads_batch=a.threads,
                flash_attn=True, verbose=False)
    series = {"raw": [], "ui": [], "api": []}

    def fresh(measure):
        """Measure from the same cache state each time: the model's KV cache holds another
        conversation (FitChat reuses the longest common prefix; without this the second path
        to send a prompt would find it cached)."""
        api_stream(url, OTHER_PROMPT, 1)
        return measure()

    for i in range(a.runs + 1):  # run 0 warms up
        other_conversation_raw(llm)
        rows = (raw_chat_once(llm, PROMPTS[i], a.max_tokens),
                fresh(lambda: _sse_chat(base, fn_index, PROMPTS[i], a.max_tokens)),
                fresh(lambda: api_stream(url, PROMPTS[i], a.max_tokens)))
        if i:
            for key, row in zip(series, rows):
                series[key].append(row)
    llm.close()
    conc = [concurrency(url, n, a.requests) for n in (1, 4, 8)]
    stop_app(proc)
    summary = {k: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in v),
                   "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in v)} for k, v in series.items()}
    report = {"summary": summary, "series": series, "concurrency": conc, "threads": a.threads,
              "max_tokens": a.max_tokens, "runs": a.runs}
    print(json.dumps({"summary": summary, "concurrency": conc}, indent=2))
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
