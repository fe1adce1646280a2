"""CPU benchmark of continuous batching through the API (issue 14): the app loaded with one slot
(replies one at a time) against the app with 4 slots, and, with ``--before REV``, the app as it was
before batching (that commit run from a git worktree, same Python environment), side by side in one run.

    .venv/bin/python bench/parallel_api_cpu.py [--rounds 2] [--requests 4] [--max-tokens 64]
        [--before d625cd4^] [--out FILE]

For each round and each setting (before, --parallel 1, --parallel 4; a fresh app each time, so drift
in the machine's speed hits all alike): 1 client, then 4 concurrent clients, each sending --requests
streamed greedy chats of --max-tokens through /v1. Reported per setting and client count: total
throughput (completion tokens per second of wall time), p50/p95 request latency and time to first
token, and errors. The ratios that matter: 1 client at 4 slots vs 1 slot (batching must not slow a
single user), and 4 clients at 4 slots vs 1 slot (the gain).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_cpu import api_stream, concurrent_streams  # noqa: E402
from bench.chat_cpu import app_endpoint, start_app, stop_app  # noqa: E402
from services.cpu import physical_cores  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def clients_run(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    rows, errors, wall = concurrent_streams(url, clients, requests, max_tokens)
    return {"clients": clients, "requests": len(rows), "errors": errors, "wall_s": wall,
            "throughput_tokens_per_s": sum(r["tokens"] for r in rows) / wall,
            "p50_latency_s": statistics.median(r["latency_s"] for r in rows) if rows else None,
            "p95_latency_s": pct([r["latency_s"] for r in rows], 0.95),
            "p50_ttft_s": statistics.median(r["ttft_s"] for r in rows) if rows else None,
            "p95_ttft_s": pct([r["ttft_s"] for r in rows], 0.95)}


BEFORE = 0  # the "parallel" of the app before batching (one reply at a time, the old engine)


def before_checkout(rev: str) -> Path:
    """A worktree of ``rev`` (made once, kept under the temp folder) that runs with this .venv."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"fitchat-before-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def one_setting(parallel: int, threads: int, requests: int, max_tokens: int, before: Optional[Path] = None) -> list[dict]:
    port = 7990 + os.getpid() % 9
    data_dir = tempfile.mkdtemp(prefix="fitchat-parallel-bench-")
    if parallel == BEFORE:
        proc, _ = start_app(port, data_dir, threads, 2048, root=before)
    else:
        proc, _ = start_app(port, data_dir, threads, 2048, ("--parallel", str(parallel)))
    url = f"http://127.0.0.1:{port}"
    try:
        app_endpoint(port)  # waits until the model is loaded
        api_stream(url, "Warm up.", 4)
        return [dict(clients_run(url, n, requests, max_tokens), parallel=parallel) for n in (1, 4)]
    finally:
        stop_app(proc)


def summarise(rows: list[dict]) -> dict:
    out = {}
    for parallel in sorted({r["parallel"] for r in rows}):
        for clients in (1, 4):
            sel = [r for r in rows if r["parallel"] == parallel and r["clients"] == clients]
            out[f"parallel{parallel}_clients{clients}"] = {
                "throughput_tokens_per_s": statistics.median(r["throughput_tokens_per_s"] for r in sel),
                "p50_latency_s": statistics.median(r["p50_latency_s"] for r in sel),
                "p95_ttft_s": statistics.median(r["p95_ttft_s"] for r in sel),
                "errors": sum(len(r["errors"]) for r in sel)}
    ratio = lambda a, b: (out[a]["throughput_tokens_per_s"] / out[b]["throughput_tokens_per_s"]  # noqa: E731
                          if out[b]["throughput_tokens_per_s"] else None)
    out["single_user_ratio_4slots_vs_1"] = ratio("parallel4_clients1", "parallel1_clients1")
    out["four_clients_ratio_4slots_vs_1"] = ratio("parallel4_clients4", "parallel1_clients4")
    if "parallel0_clients1" in out:  # parallel0: the app before batching
        out["single_user_ratio_1slot_vs_before"] = ratio("parallel1_clients1", "parallel0_clients1")
        out["four_clients_ratio_4slots_vs_before"] = ratio("parallel4_clients4", "parallel0_clients4")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--out", type=Path)
    ap.add_argument("--before", help="a commit before batching (e.g. d625cd4^), run from a git worktree")
    a = ap.parse_args()
    before = before_checkout(a.before) if a.before else None
    rows: list[dict] = []
    load = [os.getloadavg()[0]]
    for r in range(a.rounds):
        for parallel in ((BEFORE,) if before else ()) + (1, 4):
            for row in one_setting(parallel, a.threads, a.requests, a.max_tokens, before):
                rows.append(dict(row, round=r))
                print(json.dumps({k: row[k] for k in ("parallel", "clients", "throughput_tokens_per_s",
                                                       "p50_latency_s", "p95_ttft_s")}), flush=True)
            load.append(os.getloadavg()[0])
    report = {"summary": summarise(rows), "rows": rows, "threads": a.threads, "max_tokens": a.max_tokens,
              "before": a.before,
              "requests_per_client": a.requests, "rounds": a.rounds, "load_average_1m": load,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(report["summary"], indent=2))
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
