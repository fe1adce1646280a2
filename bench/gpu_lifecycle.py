"""The worker's life cycle on a real GPU, per backend (issue 7, hardening lines 12 and 13):

    python3 bench/gpu_lifecycle.py --gguf /tmp/m/l31-8b.gguf --hf /tmp/fitchat-bench/llama2-7b \\
        --out /tmp/job/out/lifecycle.json

1. load / chat / unload five times through the app's ModelManager (planned as the app plans it):
   the VRAM NVML reports for the whole GPU after each unload, against the baseline before the first load;
2. ``kill -9`` of the worker after three streamed deltas: the error the chat shows, the VRAM after,
   and a fresh load that answers;
3. forced out-of-memory: another process takes all but ``--leave-gib`` of the GPU, then
   a. the app's planned load (it sees the free VRAM and plans within it),
   b. a load that insists on every layer on the GPU, without the planner (llama.cpp) or with a GPU budget
      larger than what is free (transformers): the error the UI shows,
   c. (transformers) a reply whose prompt needs more activation memory than is left: the error, then the
      same reply once the other process has let go;
   and after each, the next load or reply works.

Prints one JSON document and writes it to --out after every stage. Needs a GPU with NVML and torch (for
the process that takes the memory); the app's own code runs as in the app.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import BackendError, LoadSpec  # noqa: E402
from backends.manager import ModelManager  # noqa: E402
from bench.gpu_transformers import process_vram_mib, vram_used_mib  # noqa: E402
from bench.synthetic_hf_model import prompt_words  # noqa: E402
from core.options import LoadOptions, SamplingOptions, TransformersLoadOptions  # noqa: E402
from services.hardware import probe  # noqa: E402
from backends.load_planning import LoadPlanner  # noqa: E402

TOLERANCE_MIB = 64
HOG = """
import sys, torch
free, _ = torch.cuda.mem_get_info(0)
leave = int(float(sys.argv[1]) * (1 << 30))
x = torch.empty(max(0, free - leave), dtype=torch.uint8, device="cuda")
print("READY", x.numel(), flush=True)
sys.stdin.read()
"""


def settle(baseline: float | None, timeout_s: float = 10.0) -> float | None:
    """The GPU's used memory once it is back within the tolerance of ``baseline`` (or after the timeout)."""
    deadline = time.monotonic() + timeout_s
    used = vram_used_mib()
    while baseline is not None and used is not None and used - baseline > TOLERANCE_MIB and time.monotonic() < deadline:
        time.sleep(0.25)
        used = vram_used_mib()
    return used


def chat(manager: ModelManager, text: str, max_tokens: int = 16) -> dict:
    stream = manager.stream_chat([{"role": "user", "content": text}],
                                 SamplingOptions(temperature=0.0, max_tokens=max_tokens), threading.Event())
    reply = "".join(stream)
    return {"chars": len(reply), "tokens": stream.stats.completion_tokens,
            "tokens_per_s": stream.stats.decode_tokens_per_s}


def new_manager(data_dir: Path, planned: bool = True) -> ModelManager:
    return ModelManager(planner=LoadPlanner(data_dir, probe) if planned else None)


class MemoryHog:
    """Another process holding all but ``leave_gib`` of GPU 0 (what a game or a second model would do)."""

    def __init__(self, leave_gib: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOG, str(leave_gib)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the memory hog did not start: {line!r}")
        self.bytes = int(line.split()[1])

    def release(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def attempt(what: str, fn) -> dict:
    started = time.monotonic()
    try:
        result = fn()
        return {"what": what, "ok": True, "seconds": round(time.monotonic() - started, 2), "result": result}
    except BackendError as exc:
        return {"what": what, "ok": False, "seconds": round(time.monotonic() - started, 2),
                "error_kind": exc.kind, "error": str(exc)}


def cycles(spec: LoadSpec, data_dir: Path, n: int) -> dict:
    manager = new_manager(data_dir)
    baseline = settle(None)
    rows = []
    for i in range(n):
        started = time.monotonic()
        info = manager.load(spec)
        load_s = time.monotonic() - started
        reply = chat(manager, f"Cycle {i}: say something.")
        worker = process_vram_mib(info.worker_pid)
        loaded = vram_used_mib()
        manager.unload()
        after = settle(baseline)
        rows.append({"cycle": i + 1, "load_s": round(load_s, 2), "n_gpu_layers": info.n_gpu_layers,
                     "worker_vram_mib": worker, "gpu_used_loaded_mib": loaded, "gpu_used_after_unload_mib": after,
                     "above_baseline_mib": None if after is None or baseline is None else round(after - baseline, 1),
                     "reply": reply})
    manager.close()
    worst = max((r["above_baseline_mib"] for r in rows if r["above_baseline_mib"] is not None), default=None)
    return {"baseline_mib": baseline, "cycles": rows, "worst_above_baseline_mib": worst,
            "back_to_baseline": worst is not None and worst <= TOLERANCE_MIB}


def kill_mid_stream(spec: LoadSpec, data_dir: Path) -> dict:
    manager = new_manager(data_dir)
    baseline = settle(None)
    info = manager.load(spec)
    # Sampled, not greedy: a zero-weight model's greedy token may be one without text, and the client
    # counts tokens as their text arrives.
    stream = manager.stream_chat([{"role": "user", "content": "Write a long story about a lighthouse."}],
                                 SamplingOptions(temperature=1.0, top_k=0, min_p=0.0, max_tokens=4000),
                                 threading.Event())
    deltas, error, kind = 0, None, None
    killed_at: list[int] = []

    def kill_after_three_tokens() -> None:  # by tokens, not deltas: a zero-weight model's tokens have no text
        while stream.progress.completion_tokens < 3:
            time.sleep(0.001)
        killed_at.append(stream.progress.completion_tokens)
        os.kill(info.worker_pid, signal.SIGKILL)

    threading.Thread(target=kill_after_three_tokens, daemon=True).start()
    try:
        for _ in stream:
            deltas += 1
    except BackendError as exc:
        error, kind = str(exc), exc.kind
    state = manager.state()
    after = settle(baseline)
    again = attempt("load again and chat", lambda: (manager.load(spec), chat(manager, "Hello again."))[1])
    manager.close()
    return {"tokens_at_kill": killed_at[0] if killed_at else None, "deltas_before_kill": deltas, "error_kind": kind, "error_shown": error, "status_after": state.status,
            "baseline_mib": baseline, "gpu_used_after_kill_mib": after,
            "above_baseline_mib": None if after is None or baseline is None else round(after - baseline, 1),
            "next_load": again}


def forced_oom(spec: LoadSpec, insist: LoadSpec, data_dir: Path, leave_gib: float, generation: bool) -> dict:
    out: dict = {"leave_gib": leave_gib}
    hog = MemoryHog(leave_gib)
    out["hog_bytes"] = hog.bytes
    out["gpu_used_with_hog_mib"] = vram_used_mib()
    try:
        planned = new_manager(data_dir)
        out["planned_load"] = attempt("planned load", lambda: _load_summary(planned.load(spec)))
        if out["planned_load"]["ok"]:
            out["planned_load"]["chat"] = attempt("chat", lambda: chat(planned, "Hello."))
        planned.close()
        blind = new_manager(data_dir, planned=insist.backend == "transformers")
        out["insisting_load"] = attempt("load insisting on the GPU", lambda: _load_summary(blind.load(insist)))
        out["insisting_load"]["status_after"] = blind.state().status
        blind.close()
    finally:
        hog.release()
    out["gpu_used_after_hog_mib"] = settle(None)
    recovery = new_manager(data_dir)
    out["load_after"] = attempt("load once the memory is free", lambda: _load_summary(recovery.load(spec)))
    if out["load_after"]["ok"]:
        out["load_after"]["chat"] = attempt("chat", lambda: chat(recovery, "Hello."))
        if generation:
            out["reply_oom"] = reply_oom(recovery, leave_gib=0.25)
    recovery.close()
    return out


def reply_oom(manager: ModelManager, leave_gib: float) -> dict:
    """A long prompt while another process holds the rest of the GPU, then the same prompt without it."""
    prompt = prompt_words(3000)
    hog = MemoryHog(leave_gib)
    try:
        first = attempt("long reply, GPU full", lambda: chat(manager, prompt, 8))
        first["status_after"] = manager.state().status
    finally:
        hog.release()
    settle(None, 3)
    return {"gpu_full": first, "gpu_free_again": attempt("same reply, GPU free", lambda: chat(manager, prompt, 8))}


def _load_summary(info) -> dict:
    return {"n_gpu_layers": info.n_gpu_layers, "n_layer": info.n_layer, "n_ctx": info.n_ctx,
            "worker_vram_mib": process_vram_mib(info.worker_pid),
            "gpu_buffers_mib": round(sum(b.mib for b in info.buffers if b.device.startswith("CUDA")
                                         and not b.device.endswith("_Host")), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--hf", type=Path, help="a safetensors model folder (bench/synthetic_hf_model.py)")
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--leave-gib", type=float, default=2.0)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/fitchat-lifecycle"))
    ap.add_argument("--stages", default="load_unload,kill_mid_stream,forced_oom")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "tolerance_mib": TOLERANCE_MIB}
    specs = {}
    if a.gguf:
        specs["llama_cpp"] = (LoadSpec(str(a.gguf), LoadOptions(n_ctx=8192)),
                              LoadSpec(str(a.gguf), LoadOptions(n_ctx=8192, n_gpu_layers=-1)))
    if a.hf:
        hf = TransformersLoadOptions(quantization="nf4", n_ctx=4096)
        specs["transformers"] = (LoadSpec(str(a.hf), hf, backend="transformers"),
                                 LoadSpec(str(a.hf), hf.model_copy(update={"gpu_memory_gib": 40.0}),
                                          backend="transformers"))

    def save() -> None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    for name, (spec, insist) in specs.items():
        section = report.setdefault(name, {})
        for stage, run in (("load_unload", lambda: cycles(spec, a.data_dir, a.cycles)),
                           ("kill_mid_stream", lambda: kill_mid_stream(spec, a.data_dir)),
                           ("forced_oom", lambda: forced_oom(spec, insist, a.data_dir, a.leave_gib,
                                                             generation=name == "transformers"))):
            if stage not in a.stages.split(","):
                continue
            t0 = time.monotonic()
            try:
                section[stage] = run()
            except Exception as exc:  # recorded; the other stages still run
                section[stage] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            section[stage]["stage_s"] = round(time.monotonic() - t0, 1)
            save()
            print(name, stage, json.dumps(section[stage], default=str)[:1500], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
