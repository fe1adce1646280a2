"""Where the app's time to first token goes, step by step, and what a Gradio session's first event
costs (issue 2). Starts the app on the embedded model, as bench/chat_cpu.py does.

    .venv/bin/python bench/ttft_steps.py [--runs 11] [--out FILE]

(a) Join cost: 20 joins of a trivial event (``/model_status``) on a kept connection, each in a new
    session, then 20 in one session.
(b) One chat, step by step, all messages from one session (a browser tab), after Clear and an
    unrelated conversation: join answered, the user's message echoed, the first reply text, and the
    worker's own TTFT from the reply's footer; ``added`` = first text minus the worker's TTFT.
(c) CPU seconds of the app's UI process and of its worker over those chats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_cpu import (PROMPTS, _fn_index, _sse_chat, app_endpoint, join, new_chat,  # noqa: E402
                            other_conversation_app, queue_events, start_app, stop_app)
from bench.resources_cpu import cpu_seconds  # noqa: E402
from services.cpu import physical_cores  # noqa: E402


def join_ms(base: str, fn_index: int, session: str | None) -> float:
    session = session or uuid.uuid4().hex[:12]
    start = time.perf_counter()
    join(base, fn_index, session, [])
    took = time.perf_counter() - start
    for _ in queue_events(base, session):
        pass
    return 1000 * took


def chat_steps(base: str, fn_index: int, session: str, prompt: str, max_tokens: int) -> dict:
    row = _sse_chat(base, fn_index, prompt, max_tokens, session)
    steps = {"join": row["join_s"], "echo": row["echo_s"], "first_text": row["ttft_s"],
             "worker_ttft": row["server_ttft_s"], "added": row["ttft_s"] - row["server_ttft_s"]}
    return {k: round(1000 * v, 1) for k, v in steps.items()}


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    port = 7850 + int(time.time()) % 50
    proc, _ = start_app(port, tempfile.mkdtemp(prefix="fitchat-bench-"), args.threads, 2048)
    try:
        base, send = app_endpoint(port)
        status = _fn_index(base, "model_status")
        tab = uuid.uuid4().hex[:12]
        report = {"joins_new_session_ms": [round(join_ms(base, status, None), 1) for _ in range(20)],
                  "joins_one_session_ms": [round(join_ms(base, status, tab), 1) for _ in range(20)]}
        worker = next(c.pid for c in psutil.Process(proc.pid).children(recursive=True)
                      if "backends.worker_main" in " ".join(c.cmdline()))
        other_conversation_app(base, send, tab)  # warm-up
        ui0, worker0, wall0 = cpu_seconds([proc.pid]), cpu_seconds([worker]), time.perf_counter()
        rows = []
        for i in range(args.runs):
            other_conversation_app(base, send, tab)
            rows.append(chat_steps(base, send, tab, PROMPTS[i % len(PROMPTS)], args.max_tokens))
            new_chat(base, tab)
        wall = time.perf_counter() - wall0
        report["chats"] = rows
        report["summary"] = {
            "join_new_session_ms_median": statistics.median(report["joins_new_session_ms"]),
            "join_one_session_ms_median": statistics.median(report["joins_one_session_ms"]),
            **{f"{k}_ms_median": statistics.median(r[k] for r in rows) for k in rows[0]},
            "wall_s": round(wall, 1), "ui_cpu_s": round(cpu_seconds([proc.pid]) - ui0, 2),
            "worker_cpu_s": round(cpu_seconds([worker]) - worker0, 2),
        }
    finally:
        stop_app(proc)
    print(json.dumps(report["summary"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
