"""CPU benchmark of the remote backend (issue 16): what FitChat adds in front of a remote engine.

    .venv/bin/python bench/remote_cpu.py [--runs 6] [--max-tokens 128] [--out bench/results/remote_cpu.json]

One llama-cpp-python ``llama_cpp.server`` on the embedded model is the remote engine. One FitChat
started with ``--remote`` fronts it. For each prompt, interleaved and from the same KV-cache state
(another conversation sent to the server just before), three paths stream the same greedy reply:
  direct  the server's own /v1/chat/completions
  api     FitChat's /v1/chat/completions (FitChat -> remote backend -> server)
  ui      FitChat's chat (Gradio queue, as the browser's Send does)
Time to first token and decode tokens/s are measured by this client on each path; the result is
the per-prompt difference (TTFT) and ratio (tokens/s) against ``direct``, and their medians.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_cpu import OTHER_PROMPT, PROMPTS, _fn_index, _sse_chat, keep_alive_client, new_chat  # noqa: E402
from services.cpu import physical_cores  # noqa: E402
from services.paths import embedded_model_path  # noqa: E402

CLIENT = keep_alive_client()


def stream_chat(url: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat; tokens counted as content chunks (one per token on both servers)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "seed": 1, "stream": True}
    start = time.perf_counter()
    first = last = None
    chunks, text = 0, []
    with CLIENT.stream("POST", url + "/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("choices") and data["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
                text.append(data["choices"][0]["delta"]["content"])
    end = time.perf_counter()
    return {"ttft_s": (first or end) - start, "tokens": chunks, "total_s": end - start,
            "tokens_per_s": (chunks - 1) / (last - first) if first and last > first else 0.0, "text": "".join(text)}


def ui_chat(base: str, fn_index: int, prompt: str, max_tokens: int, session: str) -> dict:
    """The chat's Send over Gradio's queue from one browser tab (``session``), after New chat, so
    each send starts a new conversation. (Passing an empty history does not: the history is a
    gr.State that the server keeps per session, so until 2026-12-03 every send here continued one
    growing conversation and its TTFT grew with it.) The tab's first event (Gradio building its
    per-session state) is paid in the warm-up run, as a browser pays it at page load."""
    new_chat(base, session)
    row = _sse_chat(base, fn_index, prompt, max_tokens, session)
    return {k: row[k] for k in ("ttft_s", "tokens", "chat_messages", "tokens_per_s")}


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if CLIENT.get(url, timeout=2).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark still stops its servers
    load_before = os.getloadavg()
    server_port, app_port = 8600 + os.getpid() % 50, 8700 + os.getpid() % 50
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
                               "--host", "127.0.0.1", "--port", str(server_port), "--n_ctx", "2048",
                               "--n_threads", str(a.threads), "--model_alias", "smollm2", "--verbose", "False"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = f"http://127.0.0.1:{server_port}/v1"
    app = None
    try:
        wait_http(direct + "/models", server)
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(app_port), "--data-dir",
                                tempfile.mkdtemp(prefix="fitchat-remote-bench-"), "--remote", direct],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        front = f"http://127.0.0.1:{app_port}"
        wait_http(front + "/", app)
        deadline = time.monotonic() + 120
        while not (listed := CLIENT.get(front + "/v1/models").json()).get("data"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"FitChat did not connect to the remote engine: {listed}")
            time.sleep(0.2)
        base = front + "/gradio_api"
        fn_index = _fn_index(base, "send")
        series: dict[str, list[dict]] = {"direct": [], "api": [], "ui": []}
        paths = {"direct": lambda p: stream_chat(direct, p, a.max_tokens),
                 "api": lambda p: stream_chat(front + "/v1", p, a.max_tokens),
                 "ui": lambda p: ui_chat(base, fn_index, p, a.max_tokens, session)}
        session = uuid.uuid4().hex[:12]
        for i in range(a.runs + 1):  # run 0 warms every path up
            prompt = PROMPTS[i % len(PROMPTS)]
            order = list(paths) if i % 2 else list(reversed(paths))  # neither path always goes first
            rows = {}
            for name in order:
                stream_chat(direct, OTHER_PROMPT, 1)  # the same cache state before each path
                rows[name] = paths[name](prompt)
            print(f"run {i}: " + ", ".join(f"{k} {v['ttft_s'] * 1000:.0f} ms {v['tokens_per_s']:.1f} tok/s"
                                           for k, v in rows.items()), flush=True)
            if i:
                for name, row in rows.items():
                    row.pop("text", None)
                    series[name].append(row)
    finally:
        for proc in (app, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
    summary = {}
    for name in ("api", "ui"):
        added = [1000 * (r["ttft_s"] - d["ttft_s"]) for r, d in zip(series[name], series["direct"])]
        kept = [r["tokens_per_s"] / d["tokens_per_s"] for r, d in zip(series[name], series["direct"])]
        summary[name] = {"added_ttft_ms_median": statistics.median(added), "added_ttft_ms": added,
                         "tokens_per_s_ratio_median": statistics.median(kept), "tokens_per_s_ratio": kept}
    summary["direct"] = {"ttft_ms_median": 1000 * statistics.median(r["ttft_s"] for r in series["direct"]),
                         "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in series["direct"])}
    report = {"summary": summary, "series": series, "runs": a.runs, "max_tokens": a.max_tokens,
              "threads": a.threads, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_average_before_after": [load_before, os.getloadavg()],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
