"""CPU benchmark: the app's chat over HTTP versus raw llama-cpp-python, and cold start.

    .venv/bin/python bench/chat_cpu.py [--runs 5] [--max-tokens 256] [--threads N] [--out FILE]

Same model (the embedded SmolLM2-135M Q4_1), same prompts, greedy sampling, same thread count.
* raw: ``Llama.create_chat_completion(stream=True)`` in this process (what a script would do), and
  the bare ``Llama.generate`` loop (the ceiling).
* app: ``python app.py`` in a subprocess, the ``/send`` endpoint over Gradio's HTTP queue (SSE),
  timed by the client: TTFT = request sent -> first reply text; tokens/s = (tokens - 1) / (last
  chunk - first text chunk), tokens counted by the server.
* cold start: ``python app.py`` -> first HTTP 200, versus ``python -c "import gradio"``.
Targets (issue 2): app tokens/s >= 95% of raw, TTFT overhead <= 20 ms, cold start <= 1.2x import.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.cpu import physical_cores  # noqa: E402
from services.paths import embedded_model_path  # noqa: E402

PROMPTS = [f"Story {i}: write a long, detailed story about a lighthouse keeper named Ada and a storm."
           for i in range(50)]


def raw_chat_once(llm, prompt: str, max_tokens: int) -> dict:
    msgs = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    first = last = None
    n = 0
    for chunk in llm.create_chat_completion(msgs, stream=True, max_tokens=max_tokens, temperature=0.0,
                                            seed=1, repeat_penalty=1.1, top_k=40, top_p=0.95, min_p=0.05):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
    return {"ttft_s": first - start, "tokens_per_s": (n - 1) / (last - first), "chunks": n}


def raw_generate_once(llm, prompt: str, max_tokens: int) -> dict:
    """The bare token loop on the same templated prompt: the ceiling for any streaming layer."""
    tokens = llm.tokenize(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n".encode(),
                          add_bos=False, special=True)
    start = time.perf_counter()
    first = None
    n = 0
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=1.1, top_k=40, top_p=0.95, min_p=0.05):
        now = time.perf_counter()
        first = first or now
        n += 1
        if llm._model.token_eos() == token or n >= max_tokens:
            break
    return {"ttft_s": first - start, "tokens_per_s": (n - 1) / (time.perf_counter() - first)}


def keep_alive_client():
    """One HTTP client kept for the whole benchmark, as a browser keeps its connections: a new
    client per request costs tens of milliseconds on a 2-core machine, which is not the app's time."""
    import httpx

    return httpx.Client(timeout=300)


@functools.lru_cache(maxsize=1)
def _client():
    return keep_alive_client()


def join(base: str, fn_index: int, session: str, data: list) -> None:
    """Put an event on the session's Gradio queue, as the browser's ``queue/join`` does."""
    _client().post(f"{base}/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                               "event_data": None, "trigger_id": None}).raise_for_status()


def queue_events(base: str, session: str):
    """(perf_counter time, message) from the session's SSE stream until its event completes."""
    with _client().stream("GET", f"{base}/queue/data", params={"session_hash": session}, timeout=120) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                yield time.perf_counter(), msg
                if msg.get("msg") == "process_completed":
                    return


def _sse_chat(base: str, fn_index: int, message: str, max_tokens: int, session: str | None = None) -> dict:
    """One chat over Gradio's queue. ``session``: the browser tab's session hash. A tab's first event
    makes Gradio build per-session state for every component (bench/ttft_steps.py measures it),
    which the page-load event pays in a browser; None opens a fresh session."""
    from core.options import SamplingOptions

    values = {**SamplingOptions().model_dump(), "temperature": 0.0, "seed": "1", "max_tokens": max_tokens, "stop": ""}
    # /send's inputs: message, history and conversation (gr.State: the server keeps the session's own,
    # whatever is sent), system prompt, sampling.
    data = [message, None, None, "", *[values[k] for k in SamplingOptions.model_fields]]
    session = session or uuid.uuid4().hex[:12]
    start = time.perf_counter()
    join(base, fn_index, session, data)
    joined = time.perf_counter()
    echo = first = last = None
    final = None
    for now, msg in queue_events(base, session):
        if msg.get("msg") == "process_generating":
            # The first full value is the user's message echoed; after it the chatbot arrives as
            # diffs ([op, path, value] lists): each one carries new reply text.
            value = msg["output"]["data"][0]
            if value and isinstance(value[0], list):
                first = first or now
                last = now
            else:
                echo = echo or now
        elif msg.get("msg") == "process_completed":
            if not msg.get("success", True) or "data" not in msg.get("output", {}):
                raise RuntimeError(f"the chat failed: {msg.get('output')}")
            last = now
            final = msg["output"]["data"][0]
    reply = final[-1]["content"]
    text = reply if isinstance(reply, str) else "".join(p.get("text", "") for p in reply)
    tokens = int(re.search(r"(\d+) tokens?", text).group(1))
    server_speed = re.search(r"([\d.]+) tok/s", text)  # "n/a tok/s" for a one-token reply
    server_ttft = re.search(r"TTFT ([\d.]+) (ms|s)", text)
    first = first or last
    return {"ttft_s": first - start, "tokens_per_s": (tokens - 1) / (last - first) if last > first else 0.0,
            "tokens": tokens, "join_s": joined - start, "chat_messages": len(final), "echo_s": (echo or first) - start,
            "server_tokens_per_s": float(server_speed.group(1)) if server_speed else 0.0,
            # the worker's own TTFT (request in the worker -> first token): what the app adds is the rest
            "server_ttft_s": float(server_ttft[1]) / (1000 if server_ttft[2] == "ms" else 1)}


# Sent through a path before each measured request on it, so that every path starts from the same
# KV-cache state: another conversation cached (FitChat and llama-cpp-python both reuse the longest
# common prefix, so a path whose previous prompt resembled this one would start with more cached).
OTHER_PROMPT = "An unrelated question, to put another conversation in the cache."


def other_conversation_raw(llm) -> None:
    llm.create_chat_completion([{"role": "user", "content": OTHER_PROMPT}], max_tokens=2)


def other_conversation_app(base: str, fn_index: int, session: str | None = None) -> None:
    if session:
        new_chat(base, session)
    _sse_chat(base, fn_index, OTHER_PROMPT, 2, session)
    if session:
        new_chat(base, session)


@functools.lru_cache(maxsize=8)
def _fn_index(base: str, api_name: str) -> int:
    config = _client().get(base.rsplit("/gradio_api", 1)[0] + "/config").json()
    return next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)


def new_chat(base: str, session: str) -> None:
    """Press New chat in the tab: the conversation is per session (``gr.State``), so the next message
    starts a new one instead of continuing the last."""
    _client().post(f"{base}/run/predict", json={"data": [], "fn_index": _fn_index(base, "new_chat"), "session_hash": session,
                                                "event_data": None, "trigger_id": None}).raise_for_status()


def engine_once(engine, prompt: str, max_tokens: int) -> dict:
    """FitChat's own generation loop in this process: no worker, no HTTP."""
    import threading

    from core.options import SamplingOptions

    stream = engine.stream_chat([{"role": "user", "content": prompt}],
                                SamplingOptions(temperature=0.0, seed=1, max_tokens=max_tokens), threading.Event())
    for _ in stream:
        pass
    return {"ttft_s": stream.stats.ttft_s, "tokens_per_s": stream.stats.decode_tokens_per_s}


def start_app(port: int, data_dir: str, threads: int, n_ctx: int,
              extra: tuple[str, ...] = (), root: Path = ROOT) -> tuple[subprocess.Popen, float]:
    """``root``: the checkout to run (another commit's worktree for a before/after comparison)."""
    import httpx

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", data_dir,
                             "--threads", str(threads), "--ctx", str(n_ctx), *extra], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.HTTPError:
            time.sleep(0.01)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=20)


def app_endpoint(port: int) -> tuple[str, int]:
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    while client.predict(api_name="/model_status")["status"] != "ready":
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port}/gradio_api"
    return base, _fn_index(base, "send")


def import_gradio_times(n: int = 3) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gradio"], check=True)
        out.append(time.perf_counter() - start)
    return out


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = str(embedded_model_path())

    from llama_cpp import Llama

    port = 7900 + os.getpid() % 50
    data_dir = tempfile.mkdtemp(prefix="fitchat-bench-")
    gradio_import = import_gradio_times()
    cold = []
    for _ in range(3):
        proc, seconds = start_app(port, data_dir, args.threads, args.ctx)
        cold.append(seconds)
        stop_app(proc)

    # Interleave raw and app runs so that drift in machine speed hits both alike.
    proc, _ = start_app(port, data_dir, args.threads, args.ctx)
    base, fn_index = app_endpoint(port)
    llm = Llama(model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, flash_attn=True,
                verbose=False)
    from backends.base import LoadSpec
    from backends.llama_cpp_engine import LlamaCppEngine
    from core.options import LoadOptions

    engine = LlamaCppEngine()
    engine._log._echo = None
    engine.load(LoadSpec(model, LoadOptions(n_ctx=args.ctx, n_threads=args.threads)))
    raw = {"create_chat_completion": [], "generate_loop": [], "fitchat_engine_in_process": []}
    app = []
    tab = uuid.uuid4().hex[:12]  # one browser tab sends every message, as a user's does
    for i in range(args.runs + 1):  # run 0 warms up and is dropped
        other_conversation_raw(llm)
        rows = (raw_chat_once(llm, PROMPTS[i], args.max_tokens), raw_generate_once(llm, PROMPTS[i], args.max_tokens),
                engine_once(engine, PROMPTS[i], args.max_tokens))
        # The app last, after its own cache reset: that request also lets this process's llama.cpp
        # threads (which spin for a while after they compute) go quiet before the app is timed.
        other_conversation_app(base, fn_index, tab)
        rows += (_sse_chat(base, fn_index, PROMPTS[i], args.max_tokens, tab),)
        if i:
            raw["create_chat_completion"].append(rows[0])
            raw["generate_loop"].append(rows[1])
            raw["fitchat_engine_in_process"].append(rows[2])
            app.append(rows[3])
    llm.close()
    engine.unload()
    stop_app(proc)
    summary = {
        "threads": args.threads, "max_tokens": args.max_tokens, "runs": args.runs, "app_session": "one per run",
        "raw_chat_tokens_per_s": med(raw["create_chat_completion"], "tokens_per_s"),
        "raw_chat_ttft_ms": 1000 * med(raw["create_chat_completion"], "ttft_s"),
        "raw_generate_tokens_per_s": med(raw["generate_loop"], "tokens_per_s"),
        "raw_generate_ttft_ms": 1000 * med(raw["generate_loop"], "ttft_s"),
        "engine_in_process_tokens_per_s": med(raw["fitchat_engine_in_process"], "tokens_per_s"),
        "engine_in_process_ttft_ms": 1000 * med(raw["fitchat_engine_in_process"], "ttft_s"),
        "app_tokens_per_s": med(app, "tokens_per_s"),
        "app_ttft_ms": 1000 * med(app, "ttft_s"),
        "app_worker_ttft_ms": 1000 * med(app, "server_ttft_s"),
        # paired per request, so the engine's own run-to-run spread (±30 ms here) cancels out
        "app_added_ttft_ms": 1000 * statistics.median(r["ttft_s"] - r["server_ttft_s"] for r in app),
        "app_cold_start_s": statistics.median(cold),
        "import_gradio_s": statistics.median(gradio_import),
    }
    summary["app_vs_raw_chat_tokens"] = summary["app_tokens_per_s"] / summary["raw_chat_tokens_per_s"]
    summary["app_vs_raw_generate_tokens"] = summary["app_tokens_per_s"] / summary["raw_generate_tokens_per_s"]
    summary["ttft_overhead_ms"] = summary["app_ttft_ms"] - summary["raw_chat_ttft_ms"]
    summary["cold_start_ratio"] = summary["app_cold_start_s"] / summary["import_gradio_s"]
    report = {"summary": summary, "raw": raw, "app": app, "cold_start_s": cold, "import_gradio_s": gradio_import}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
