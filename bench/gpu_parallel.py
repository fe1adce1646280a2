"""GPU benchmark for issue 14 (run by bench/gpu_session_issue14.sh; also runs on CPU with a tiny model).

    python3 bench/gpu_parallel.py --model M.gguf --bin $BIN --out OUT [--prompt-tokens 300] [--tokens 128]

1. One reply: FitChat's engine (in process, greedy) decode tokens/s against llama.cpp's own
   `llama-completion` (same prompt, greedy, same context/batch/flash attention, EOS ignored) and
   `llama-bench` tg128. Ratio engine / llama-completion (target >= 95 %).
2. 8 replies at once through the ModelManager and the worker process (the path the API takes, minus
   HTTP: the GPU image has no FastAPI), the model loaded with parallel=8: total decode throughput,
   p95 time to first token, every reply served; the same harness with 1 reply; and
   `llama-batched-bench -npl 1,4,8` on the same file (target: 8 replies >= 80 % of its 8-parallel
   S_TG, and >= 3x one reply).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec  # noqa: E402
from backends.llama_cpp_engine import LlamaCppEngine  # noqa: E402
from backends.manager import ModelManager  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hum old tunes near "
         "the river bank and count every star in the long cold winter night").split()


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def make_prompt(engine: LlamaCppEngine, n_tokens: int, salt: int = 0) -> str:
    """Text of about ``n_tokens`` tokens for this model's tokenizer (distinct per ``salt``)."""
    words = [f"{salt}"] + [WORDS[(i * 7 + salt) % len(WORDS)] for i in range(4 * n_tokens)]
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix of words within n_tokens
        mid = (lo + hi + 1) // 2
        if len(engine.tokenize(" ".join(words[:mid]), True)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def engine_decode(model: str, prompt: str, tokens: int, opts: LoadOptions, runs: int) -> dict:
    engine = LlamaCppEngine()
    engine._log._echo = None
    engine.load(LoadSpec(model, opts))
    params = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=tokens, seed=1)
    rows = []
    for i in range(runs + 1):  # run 0 warms up
        engine.loop.pool.slots[0].tokens.clear()  # no prefix reuse: every run evaluates the prompt
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(engine._ctx), True)
        stream = engine.stream_chat(prompt, params, threading.Event())
        for _ in stream:
            pass
        if i:
            rows.append(stream.stats.to_dict())
    engine.unload()
    speeds = [r["decode_tokens_per_s"] for r in rows]
    return {"runs": rows, "decode_tokens_per_s": statistics.median(speeds),
            "completion_tokens": [r["completion_tokens"] for r in rows]}


def llama_completion(bin_dir: str, model: str, prompt_file: Path, tokens: int, opts: LoadOptions, runs: int) -> dict:
    exe = Path(bin_dir, "llama-completion")
    if not exe.exists():
        return {"error": f"{exe} not found"}
    speeds, tails = [], []
    for i in range(runs + 1):
        cmd = [str(exe), "-m", model, "-f", str(prompt_file), "-n", str(tokens), "-ngl", "99", "-fa", "on",
               "-c", str(opts.n_ctx), "-b", str(opts.n_batch), "-ub", str(opts.n_batch), "-t", str(opts.n_threads),
               "--temp", "0", "--repeat-penalty", "1.0", "--seed", "1", "--ignore-eos", "-no-cnv"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        text = out.stderr + out.stdout
        evals = list(re.finditer(r"^(?!.*prompt).*eval time =\s*[\d.]+ ms /\s*(\d+) runs.*?([\d.]+) tokens per second",
                                 text, re.M))
        if not evals:
            tails.append(text[-1500:])
            continue
        if i:
            speeds.append(float(evals[-1].group(2)))
    return {"decode_tokens_per_s": statistics.median(speeds) if speeds else None, "runs": speeds,
            "errors": tails[:2], "command": " ".join(cmd)}


def llama_bench(bin_dir: str, model: str, opts: LoadOptions) -> dict:
    cmd = [str(Path(bin_dir, "llama-bench")), "-m", model, "-ngl", "99", "-fa", "1", "-p", "0", "-n", "128",
           "-t", str(opts.n_threads), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    try:
        rows = json.loads(out.stdout)
        return {"tg128_tokens_per_s": rows[0]["avg_ts"], "command": " ".join(cmd)}
    except (ValueError, IndexError, KeyError):
        return {"error": (out.stderr + out.stdout)[-1500:], "command": " ".join(cmd)}


def batched_bench(bin_dir: str, model: str, prompt_tokens: int, tokens: int, opts: LoadOptions,
                  ctx: int = 8192, batch: int = 2048) -> dict:
    cmd = [str(Path(bin_dir, "llama-batched-bench")), "-m", model, "-ngl", "99", "-fa", "on", "-c", str(ctx),
           "-b", str(batch), "-ub", "512", "-npp", str(prompt_tokens), "-ntg", str(tokens), "-npl", "1,4,8",
           "-t", str(opts.n_threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rows = {}
    for line in (out.stdout + out.stderr).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and all(re.fullmatch(r"[\d.]+", c) for c in cells[:10]):
            b = int(cells[2])
            rows[b] = {"S_TG_tokens_per_s": float(cells[7]), "S_tokens_per_s": float(cells[9]),
                       "T_PP_s": float(cells[4]), "T_TG_s": float(cells[6])}
    return {"by_parallel": rows, "command": " ".join(cmd),
            **({} if rows else {"error": (out.stdout + out.stderr)[-1500:]})}


def _applied(info) -> dict:
    """What a load ran with (a planner choice must not hide a difference between two paths)."""
    return {k: getattr(info, k, None) for k in ("n_ctx", "kv_type", "flash_attn", "n_parallel", "n_gpu_layers",
                                                "n_threads")}


def _span_throughput(rows: list[dict]) -> Optional[float]:
    ok = [r for r in rows if "tokens" in r]
    span = max(r["end"] for r in ok) - max(r["first"] for r in ok) if ok else 0
    return sum(r["tokens"] - 1 for r in ok) / span if span > 0 else None


def engine_replies_at_once(model: str, prompts: list[str], tokens: int, opts: LoadOptions) -> dict:
    """The same replies through FitChat's engine in this process (no worker, no IPC): where the
    decode loop's step time goes (llama_decode, samplers, the rest), to tell the loop's cost from
    the worker's."""
    engine = LlamaCppEngine()
    engine._log._echo = None
    info = engine.load(LoadSpec(model, opts.model_copy(update={"parallel": len(prompts)})))
    params = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=tokens, seed=1)
    loop = engine.loop

    def once() -> dict:
        for slot in loop.pool.slots:
            slot.tokens.clear()
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(engine._ctx), True)
        before = dict(loop.times)
        rows: list[dict] = [{} for _ in prompts]

        def run(i: int) -> None:
            stream = engine.stream_chat(prompts[i], params, threading.Event())
            for _ in stream:
                pass
            end, st = time.perf_counter(), stream.stats
            rows[i] = {"first": end - st.total_s + st.ttft_s, "end": end, "tokens": st.completion_tokens}

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        wall = time.perf_counter() - t0
        times = {k: loop.times[k] - before[k] for k in before}
        steps = max(1, times["steps"])
        return {"decode_tokens_per_s": _span_throughput(rows), "steps": times["steps"], "wall_s": wall,
                "per_step_ms": {k: 1000 * times[k] / steps for k in ("step_s", "decode_s", "sample_s")},
                "batch_tokens_per_step": times["batch_tokens"] / steps}

    try:
        once()  # warm-up
        return {"info": _applied(info), **once()}
    finally:
        engine.unload()


def replies_at_once(model: str, prompts: list[str], tokens: int, opts: LoadOptions) -> dict:
    """len(prompts) replies started together through the ModelManager (its gate and line) and the
    worker process; decode throughput counted as llama-batched-bench's S_TG: tokens after each
    reply's first over the time from the last first token to the last token."""
    manager = ModelManager(max_waiting=16)
    manager.load(LoadSpec(model, opts.model_copy(update={"parallel": max(1, len(prompts))})))
    loaded = manager.state().info
    params = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=tokens, seed=1)

    def once() -> dict:
        rows: list[dict] = [{} for _ in prompts]

        def run(i: int) -> None:
            start = time.perf_counter()
            try:
                stream = manager.stream_chat(prompts[i], params, threading.Event())
                for _ in stream:
                    pass
                # the worker times the reply from when it got it (a synthetic model's tokens may bring
                # no text, so deltas cannot time it here); a client also waits for the worker to start it
                end, st = time.perf_counter(), stream.stats
                rows[i] = {"first": end - st.total_s + st.ttft_s, "end": end, "tokens": st.completion_tokens,
                           "ttft_s": end - start - st.total_s + st.ttft_s}
            except Exception as exc:  # reported
                rows[i] = {"error": f"{type(exc).__name__}: {exc}"}

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        wall = time.perf_counter() - t0
        ok = [r for r in rows if "tokens" in r]
        ttfts = sorted(r["ttft_s"] for r in ok)
        decode_span = max(r["end"] for r in ok) - max(r["first"] or r["end"] for r in ok) if ok else 0
        return {"served": len(ok), "asked": len(prompts), "errors": [r["error"] for r in rows if "error" in r],
                "total_tokens": sum(r["tokens"] for r in ok), "wall_s": wall,
                "throughput_incl_prefill_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
                "decode_tokens_per_s": (sum(r["tokens"] - 1 for r in ok) / decode_span) if decode_span > 0 else None,
                "p50_ttft_s": statistics.median(ttfts) if ttfts else None,
                "p95_ttft_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] if ttfts else None}

    try:
        once()  # warm-up
        return {"info": _applied(loaded), **once()}
    finally:
        manager.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default=os.environ.get("BIN", ""))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    opts = LoadOptions(n_ctx=512 * ((a.prompt_tokens + a.tokens) // 512 + 1), n_threads=a.threads, n_batch=512,
                       n_gpu_layers=-1, flash_attn=True, parallel=1)
    report: dict = {"model": a.model, "prompt_tokens": a.prompt_tokens, "tokens": a.tokens, "threads": a.threads,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n_ctx_per_reply": opts.n_ctx}

    def save() -> None:
        (a.out / "issue14_parallel.json").write_text(json.dumps(report, indent=2))

    probe = LlamaCppEngine()
    probe._log._echo = None
    probe.load(LoadSpec(a.model, opts))
    prompts = [make_prompt(probe, a.prompt_tokens, salt) for salt in range(a.clients)]
    report["prompt_tokens_measured"] = len(probe.tokenize(prompts[0], True))
    probe.unload()
    prompt_file = a.out / "prompt.txt"
    prompt_file.write_text(prompts[0])

    log("engine, one reply")
    report["engine_one_reply"] = engine_decode(a.model, prompts[0], a.tokens, opts, a.runs)
    save()
    if a.bin:
        log("llama-completion")
        report["llama_completion"] = llama_completion(a.bin, a.model, prompt_file, a.tokens, opts, a.runs)
        log("llama-bench")
        report["llama_bench"] = llama_bench(a.bin, a.model, opts)
        save()
    log(f"{a.clients} replies at once in this process (the engine's loop, no worker)")
    report["engine_replies_at_once"] = {str(n): engine_replies_at_once(a.model, prompts[:n], a.tokens, opts)
                                        for n in (1, a.clients)}
    save()
    log(json.dumps(report["engine_replies_at_once"]))
    log(f"{a.clients} replies at once through the manager and worker")
    report["replies_at_once"] = {str(n): replies_at_once(a.model, prompts[:n], a.tokens, opts)
                                 for n in (1, a.clients)}
    save()
    if a.threads > 2:  # with every layer on the GPU the CPU thread pool only spins: fewer threads, more for Python
        log(f"{a.clients} replies through the manager and worker with 2 llama.cpp threads")
        report["replies_at_once_2_threads"] = replies_at_once(a.model, prompts, a.tokens,
                                                              opts.model_copy(update={"n_threads": 2}))
        save()
    if a.bin:
        log("llama-batched-bench")
        report["llama_batched_bench"] = batched_bench(a.bin, a.model, a.prompt_tokens, a.tokens, opts)
        # ... and with FitChat's own context: n_ctx per reply x 8 cells, batch 512
        report["llama_batched_bench_fitchat_ctx"] = batched_bench(a.bin, a.model, a.prompt_tokens, a.tokens, opts,
                                                                  ctx=opts.n_ctx * a.clients, batch=opts.n_batch)
    one = report["engine_one_reply"]["decode_tokens_per_s"]
    ref = (report.get("llama_completion") or {}).get("decode_tokens_per_s")
    many = report["replies_at_once"][str(a.clients)]["decode_tokens_per_s"]
    solo = report["replies_at_once"]["1"]["decode_tokens_per_s"]
    bb = (report.get("llama_batched_bench") or {}).get("by_parallel", {}).get(a.clients, {}).get("S_TG_tokens_per_s")
    report["ratios"] = {"engine_vs_llama_completion": one / ref if one and ref else None,
                        f"{a.clients}_replies_vs_batched_bench": many / bb if many and bb else None,
                        f"{a.clients}_replies_vs_one": many / solo if many and solo else None}
    save()
    log(json.dumps(report["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
