"""GPU benchmark of the transformers backend (issue 5): NF4 and bf16 decode tokens/s at batch 1 for
plain ``model.generate``, the engine's own streaming loop (DynamicCache) and the engine's static
cache + torch.compile path; memory predicted by core/hf_memory.py beside get_memory_footprint,
torch and NVML; a partial CPU offload through the real worker; VRAM after unload versus baseline.

    python3 bench/gpu_transformers.py --out bench/results/gpu_transformers.json      # GPU, 7B shape
    .venv/bin/python bench/gpu_transformers.py --shape tiny --device cpu --out /tmp/gpu_transformers.json

The model is a random-weight Llama-2-7B shape (bench/synthetic_hf_model.py), built once under
--workdir. Each quantisation is measured in its own child process, loaded with the engine's load
function (TransformersEngine.load, as in the worker); this parent never imports torch, so NVML's
reading after a child exits is the baseline test. Every run is warmed up first (the first generate
after a load is 2.8x slower); reported figures are medians over --runs, series interleaved.
Prints one JSON document and writes it to --out after every stage.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic_hf_model import prompt_words  # noqa: E402

MIB = 1 << 20


# -- VRAM readings (no torch: NVML through nvidia-ml-py, else nvidia-smi) -----------------------
def _smi(query: str) -> list[list[str]]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30)
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]


def vram_used_mib() -> float | None:
    """Memory in use on GPU 0, all processes (what NVML reports)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / MIB
    except Exception:  # no nvidia-ml-py or no driver: try the CLI
        rows = _smi("gpu=memory.used")
        return float(rows[0][0]) if rows else None


def process_vram_mib(pid: int) -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory / MIB
        return None
    except Exception:
        for row in _smi("compute-apps=pid,used_memory"):
            if row and row[0] == str(pid):
                return float(row[1])
        return None


def _pct(predicted, measured) -> float | None:
    return round(100.0 * (predicted - measured) / measured, 2) if predicted and measured else None


# -- child: one quantisation, loaded by the engine ----------------------------------------------
def _machine() -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as exc:
        info["bitsandbytes"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), compute_capability=list(torch.cuda.get_device_capability(0)),
                    cuda=torch.version.cuda)
    return info


def _hf_generate_tps(engine, messages, new_tokens: int) -> dict:
    """Plain ``model.generate`` (greedy, DynamicCache), timed per token by a streamer."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    ids = torch.tensor([engine.tokenize_prompt(messages)], device=engine.input_device())
    clock = Clock()
    started = time.perf_counter()
    with torch.no_grad():
        engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, streamer=clock)
    tokens = clock.times[1:]  # the first put is the prompt
    return {"tokens_per_s": (len(tokens) - 1) / (tokens[-1] - tokens[0]), "ttft_s": tokens[0] - started,
            "tokens": len(tokens)}


def _engine_tps(engine, messages, params) -> dict:
    stream = engine.stream_chat(messages, params, threading.Event())
    for _ in stream:
        pass
    s = stream.stats
    return {"tokens_per_s": s.decode_tokens_per_s, "ttft_s": s.ttft_s, "tokens": s.completion_tokens}


def _memory(engine, kv_tokens: int, static: bool, baseline_mib: float | None) -> dict:
    import torch

    from backends.hf_loading import measured_weights
    from core.hf_memory import HfMemorySettings, RuntimeOverhead, estimate_memory

    plan, cuda = engine.plan, engine.input_device().type == "cuda"
    opts = plan.options
    settings = HfMemorySettings(opts.quantization, plan.dtype, opts.double_quant, tuple(opts.skip_modules),
                                n_ctx=plan.n_ctx, n_batch=opts.n_batch, static_cache=static,
                                nf4_cpu_layout=not cuda and plan.support.bnb_cpu_repacks_nf4)
    pred = estimate_memory(plan.repo.dims, plan.repo.tensors, settings, None if cuda else 0, RuntimeOverhead(), kv_tokens)
    side = pred.gpu if cuda else pred.cpu
    weights = sum(measured_weights(engine.model).values())
    out = {"predicted_weights_mib": round(side.weights / MIB, 1), "measured_weights_mib": round(weights / MIB, 1),
           "weights_error_pct": _pct(side.weights, weights),
           "predicted_footprint_mib": round(pred.footprint_bytes / MIB, 1),
           "get_memory_footprint_mib": round(engine.model.get_memory_footprint() / MIB, 1),
           "predicted_kv_mib": round(side.kv_cache / MIB, 1), "kv_tokens": kv_tokens,
           "footprint_error_pct": _pct(pred.footprint_bytes, engine.model.get_memory_footprint())}
    if cuda:
        torch.cuda.synchronize()
        nvml = process_vram_mib(os.getpid())
        device = vram_used_mib()
        out.update(predicted_gpu_total_mib=round(pred.gpu.total / MIB, 1),
                   predicted_gpu_breakdown_mib={k: round(v / MIB, 1) for k, v in vars(pred.gpu).items()},
                   torch_allocated_mib=round(torch.cuda.memory_allocated() / MIB, 1),
                   torch_reserved_mib=round(torch.cuda.memory_reserved() / MIB, 1),
                   nvml_process_mib=nvml,
                   nvml_device_minus_baseline_mib=round(device - baseline_mib, 1) if device and baseline_mib is not None else None)
        measured_total = nvml or out["nvml_device_minus_baseline_mib"]
        out["gpu_total_error_pct"] = _pct(pred.gpu.total / MIB, measured_total)
    return out


def child_measure(args) -> dict:
    from backends.base import LoadSpec
    from backends.hf_decode import StaticDecoder
    from backends.hf_loading import TORCH_DTYPES
    from backends.transformers_engine import TransformersEngine
    from core.options import SamplingOptions, TransformersLoadOptions

    engine = TransformersEngine()
    opts = TransformersLoadOptions(quantization=args.quant, n_ctx=args.ctx,
                                   gpu_memory_gib=0 if args.device == "cpu" else None)
    started = time.monotonic()
    info = engine.load(LoadSpec(str(args.model), opts, backend="transformers", display_name=args.quant))
    result = {"quant": args.quant, "machine": _machine(), "load_s": round(time.monotonic() - started, 2),
              "dtype": engine.plan.dtype, "attention": engine.plan.attention, "n_gpu_layers": info.n_gpu_layers,
              "buffers": [vars(b) for b in info.buffers]}
    engine._eos_ids = frozenset()  # time --new-tokens tokens every run, as min_new_tokens does for generate
    messages = [{"role": "user", "content": prompt_words(args.prompt_words)}]
    params = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=args.new_tokens)
    series: dict[str, list[dict]] = {"hf_generate": [], "engine_eager": []}
    _hf_generate_tps(engine, messages, args.new_tokens)  # warm-up: the first generate after load is slow
    _engine_tps(engine, messages, params)
    for _ in range(args.runs):
        series["hf_generate"].append(_hf_generate_tps(engine, messages, args.new_tokens))
        series["engine_eager"].append(_engine_tps(engine, messages, params))
    prompt_tokens = len(engine.tokenize_prompt(messages))
    result["memory_eager"] = _memory(engine, prompt_tokens + args.new_tokens, False, args.baseline_mib)

    engine.decoder.release()
    started = time.monotonic()
    engine.decoder = StaticDecoder(engine.model, engine.input_device(), engine.plan.n_ctx, TORCH_DTYPES[engine.plan.dtype])
    result.update(compile_s=round(time.monotonic() - started, 2), compiled_decoder=engine.decoder.name,
                  compile_error=engine.decoder.compile_error)
    _engine_tps(engine, messages, params)  # warm-up
    series["engine_compiled"] = [_engine_tps(engine, messages, params) for _ in range(args.runs)]
    result["memory_compiled"] = _memory(engine, engine.plan.n_ctx, True, args.baseline_mib)
    result["runs"] = series
    medians = {k: round(statistics.median(r["tokens_per_s"] for r in v), 2) for k, v in series.items()}
    result["median_tokens_per_s"] = medians
    result["median_ttft_s"] = {k: round(statistics.median(r["ttft_s"] for r in v), 4) for k, v in series.items()}
    result["compiled_vs_generate"] = round(medians["engine_compiled"] / medians["hf_generate"], 2)
    result["eager_vs_generate"] = round(medians["engine_eager"] / medians["hf_generate"], 2)
    return result


# -- parent ---------------------------------------------------------------------------------------
def run_child(args, quant: str, baseline: float | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--quant", quant, "--model", str(args.model), "--device", args.device,
           "--ctx", str(args.ctx), "--new-tokens", str(args.new_tokens), "--runs", str(args.runs),
           "--prompt-words", str(args.prompt_words), "--baseline-mib", str(baseline if baseline is not None else -1)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.child_timeout)
    sys.stderr.write(proc.stderr[-4000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"quant": quant, "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    return json.loads(lines[-1][len("RESULT "):])


def offload_stage(args, baseline: float | None) -> dict:
    """NF4 with a GPU budget that holds about half of the blocks, through the real worker; then
    unload and check that the VRAM comes back."""
    from backends.base import LoadSpec
    from backends.worker_client import WorkerBackend
    from core.hf_memory import GIB, HfMemorySettings, estimate_memory
    from core.options import SamplingOptions, TransformersLoadOptions
    from services.hf_repo import inspect_repo

    repo = inspect_repo(args.model)
    settings = HfMemorySettings("nf4", "bf16", n_ctx=args.ctx)
    budget_gib = 0.5
    while budget_gib < 80:
        est = estimate_memory(repo.dims, repo.tensors, settings, int(budget_gib * GIB))
        if est.gpu_blocks >= est.n_blocks // 2:
            break
        budget_gib += 0.25
    backend = WorkerBackend("transformers", start_timeout_s=120)
    started = time.monotonic()
    info = backend.load(LoadSpec(str(args.model), TransformersLoadOptions(quantization="nf4", n_ctx=args.ctx,
                                                                           gpu_memory_gib=budget_gib),
                                 backend="transformers"))
    load_s = time.monotonic() - started
    stream = backend.stream_chat([{"role": "user", "content": prompt_words(args.prompt_words)}],
                                 SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=16), threading.Event())
    for _ in stream:
        pass
    worker_mib = process_vram_mib(info.worker_pid)
    device_mib = vram_used_mib()
    backend.unload()
    time.sleep(1.0)
    after = vram_used_mib()
    measured = worker_mib or (device_mib - baseline if device_mib is not None and baseline is not None else None)
    return {"budget_gib": budget_gib, "planned_gpu_blocks": est.gpu_blocks, "n_blocks": est.n_blocks,
            "n_gpu_layers_reported": info.n_gpu_layers, "load_s": round(load_s, 1),
            "tokens_per_s": stream.stats.decode_tokens_per_s, "ttft_s": stream.stats.ttft_s,
            "buffers": [vars(b) for b in info.buffers],
            "predicted_gpu_total_mib": round(est.gpu.total / MIB, 1), "predicted_cpu_weights_mib": round(est.cpu.weights / MIB, 1),
            "nvml_worker_mib": worker_mib, "gpu_total_error_pct": _pct(est.gpu.total / MIB, measured),
            "vram_after_unload_mib": after, "baseline_mib": baseline,
            "returned_to_baseline": after is not None and baseline is not None and abs(after - baseline) < 64}


def missing_packages(device: str) -> list[str]:
    import importlib.util

    needed = ["torch", "transformers", "accelerate", "safetensors", "tokenizers", "pydantic", "jinja2"]
    needed += ["bitsandbytes"] if device == "cuda" else []
    return [name for name in needed if importlib.util.find_spec(name) is None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama2-7b", choices=["llama2-7b", "tiny"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quant", default="nf4,bf16")
    parser.add_argument("--stages", default="measure,offload", help="measure, offload (GPU only)")
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fitchat-bench"))
    parser.add_argument("--child-timeout", type=int, default=480)
    parser.add_argument("--checkpoint", type=Path, help="measure this model folder instead of a synthetic one")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-mib", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.baseline_mib = None if args.baseline_mib is None or args.baseline_mib < 0 else args.baseline_mib
        print("RESULT " + json.dumps(child_measure(args)), flush=True)
        return 0

    missing = missing_packages(args.device)
    if missing:
        print(f"missing Python packages: {', '.join(missing)}. Install their wheels first (no network here: "
              "carry them, e.g. in .gpu/whl, and `python3 -m pip install --no-index --no-deps .gpu/whl/*.whl`).",
              file=sys.stderr)
        return 2
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "shape": args.shape,
                    "device": args.device, "ctx": args.ctx, "new_tokens": args.new_tokens,
                    "prompt_words": args.prompt_words, "runs": args.runs, "results": {}}

    def save() -> None:
        text = json.dumps(report, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")

    baseline = vram_used_mib() if args.device == "cuda" else None
    report["vram_baseline_mib"] = baseline
    if args.checkpoint:
        args.model = args.checkpoint.resolve()
        report["model"] = {"checkpoint": str(args.model)}
    else:
        args.model = args.workdir / args.shape
        build = subprocess.run([sys.executable, str(ROOT / "bench" / "synthetic_hf_model.py"), "--shape", args.shape,
                                "--device", args.device, "--out", str(args.model)], capture_output=True, text=True)
        if build.returncode != 0:
            report["error"] = "building the synthetic model failed: " + build.stderr[-3000:]
            save()
            print(json.dumps(report, indent=2))
            return 1
        report["model"] = json.loads(build.stdout.strip().splitlines()[-1])
    save()
    if "measure" in args.stages:
        for quant in args.quant.split(","):
            result = run_child(args, quant, baseline)
            time.sleep(1.0)
            after = vram_used_mib() if args.device == "cuda" else None
            result.update(vram_after_exit_mib=after,
                          vram_returned_to_baseline=None if after is None or baseline is None else abs(after - baseline) < 64)
            report["results"][quant] = result
            save()
    if "offload" in args.stages and args.device == "cuda":
        try:
            report["offload_nf4"] = offload_stage(args, baseline)
        except Exception as exc:  # record and go on: the other stages' results stand
            report["offload_nf4"] = {"error": f"{type(exc).__name__}: {exc}"}
        save()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
