"""Issue 15 on a GPU: the quality check's time per 1000 tokens (fully on the GPU and partly
offloaded), and the KV cache in VRAM versus RAM at 4k and 32k contexts on an 8 GiB budget,
predicted (core.planner) versus measured (NVML, llama.cpp's buffers, tokens/s).

    python bench/gpu_quality_kv.py --model /tmp/m/l31-8b.gguf --out /tmp/job/out [--quick]

Synthetic weights (zeros) give meaningless perplexity, so only times are recorded; a run against
itself checks that KL is 0 on the GPU too. Everything goes through the app's own path (worker
processes, services.quality.run_quality). Writes quality_kv.json under --out after every row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec  # noqa: E402
from backends.manager import ModelManager  # noqa: E402
from backends.worker_client import WorkerBackend  # noqa: E402
from bench.gpu_measure import MIB, measured_load, stream_stats  # noqa: E402
from bench.gpu_planner_sweep import gpu_buffer_bytes  # noqa: E402
from core.hardware import GIB  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from core.planner import Calibration, optimise  # noqa: E402
from core.quality import QualityOptions  # noqa: E402
from services.quality import QualityStore, run_quality  # noqa: E402

LONG_PROMPT = "Once upon a time, " + "and then " * 110  # ~1500 tokens with tools.synth_gguf's byte-level vocabulary


def quality_row(path: str, ngl: int, windows: int, ref: bool, store: QualityStore) -> dict:
    manager = ModelManager()
    spec = LoadSpec(path, LoadOptions(n_ctx=512, n_gpu_layers=ngl, flash_attn=True))
    try:
        started = time.monotonic()
        manager.load(spec, busy_timeout_s=600)
        load_s = time.monotonic() - started
        run = run_quality(manager, spec, store, QualityOptions(max_windows=windows),
                          ref_spec=spec if ref else None)
    finally:
        manager.close()
    r = run.result
    per_window = [w.seconds for w in r.windows]
    evaluated = r.windows_done * r.options["window"]
    return {"ngl": ngl, "windows": r.windows_done, "window": r.options["window"], "load_s": round(load_s, 2),
            "seconds": r.seconds, "seconds_per_1000_tokens": r.seconds_per_1000_tokens,
            "median_window_s": statistics.median(per_window) if per_window else None,
            "first_window_s": per_window[0] if per_window else None,
            "steady_s_per_1000_tokens": (1000 * statistics.median(per_window[1:]) / r.options["window"]
                                         if len(per_window) > 1 else None),
            "tokens_evaluated": evaluated, "n_tokens_text": r.n_tokens, "complete": r.complete,
            "kl_mean": r.kl_mean, "top1": r.top1, "ppl": r.ppl,
            "reference_seconds": run.reference.seconds if run.reference else None}


def kv_row(path: str, ngl: int, ctx: int, placement: str, tokens: int) -> dict:
    def long_prompt(_info) -> dict:
        # a fresh long prompt: prompt processing, where attention over the cache runs on the CPU with "ram"
        long = stream_stats(backend, LONG_PROMPT, SamplingOptions(temperature=0.0, max_tokens=2, seed=1))
        return {"prompt_tokens": long.prompt_tokens, "prompt_s": long.ttft_s,
                "prompt_tokens_per_s": round(long.prompt_tokens / long.ttft_s, 1) if long.ttft_s else None}

    backend = WorkerBackend("llama_cpp")
    info, row = measured_load(backend, LoadSpec(path, LoadOptions(n_ctx=ctx, n_gpu_layers=ngl, kv_type="f16",
                                                                  flash_attn=True, kv_placement=placement)),
                              SamplingOptions(temperature=0.0, max_tokens=tokens, seed=1), long_prompt)
    kv_devices = sorted({b.device for b in info.buffers if b.kind == "KV"})
    return {**row, "buffers": [asdict(b) for b in info.buffers],
            "gpu_buffers": gpu_buffer_bytes([asdict(b) for b in info.buffers]),
            "kv_buffer_devices": kv_devices, "n_gpu_layers_effective": info.n_gpu_layers}


def main() -> int:
    from services.hardware import probe
    from services.model_files import gguf_shape

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-gib", type=float, default=8.0)
    ap.add_argument("--contexts", default="4096,32768")
    ap.add_argument("--quick", action="store_true", help="fewer windows and tokens (a CPU check of the script)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    hw = probe()
    shape = gguf_shape(Path(a.model))
    full = shape.n_layer + 1
    report = {"machine": {"gpu": asdict(hw.gpus[0]) if hw.gpus else None, "cores": hw.cpu_physical_cores,
                          "cpu": hw.cpu_name, "offload": hw.llama_gpu_offload,
                          "ram_bandwidth": hw.ram_bandwidth_bytes_per_s},
              "model": {"path": a.model, "n_layer": shape.n_layer, "n_vocab": shape.n_vocab,
                        "quantization": shape.quantization},
              "quality": [], "kv": [], "errors": []}
    out = a.out / "quality_kv.json"

    def save() -> None:
        out.write_text(json.dumps(report, indent=1, default=str))

    store = QualityStore(Path(tempfile.mkdtemp(prefix="fitchat-q15-")))
    gpu = hw.can_offload
    windows = 2 if a.quick else 8
    quality_configs = [(-1 if gpu else 0, windows, True)]
    if gpu:
        quality_configs.append((full // 2, max(2, windows // 2), False))
    for ngl, n, ref in quality_configs:
        print(f"quality: ngl={ngl} windows={n} ref={ref}", flush=True)
        try:
            row = quality_row(a.model, ngl, n, ref, store)
        except Exception as exc:
            row = {"ngl": ngl, "error": f"{type(exc).__name__}: {exc}"}
        report["quality"].append(row)
        print(json.dumps({k: row.get(k) for k in ("ngl", "seconds_per_1000_tokens", "steady_s_per_1000_tokens",
                                                  "kl_mean", "top1", "error")}), flush=True)
        save()

    budget = hw.with_budget(vram_bytes=int(a.budget_gib * GIB)) if hw.gpus else hw
    cal = Calibration()
    for ctx in [int(c) for c in a.contexts.split(",") if c]:
        auto = optimise(shape, budget, n_ctx=ctx, kv_types=("f16",), cal=cal, kv_placements=("gpu", "ram"))
        for placement in ("gpu", "ram"):
            plan = optimise(shape, budget, n_ctx=ctx, kv_types=("f16",), cal=cal, kv_placements=(placement,))
            row = {"ctx": ctx, "placement": placement, "budget_gib": a.budget_gib, "predicted": plan.to_dict(),
                   "auto_choice": auto.kv_placement, "auto_ngl": auto.n_gpu_layers}
            print(f"kv: ctx={ctx} placement={placement} ngl={plan.n_gpu_layers} fit={plan.fit}", flush=True)
            if plan.fit != "no_fit":
                try:
                    row["measured"] = kv_row(a.model, plan.n_gpu_layers, ctx, plan.kv_placement,
                                             16 if a.quick else 64)
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
            m = row.get("measured", {})
            print(json.dumps({"ctx": ctx, "placement": placement, "ngl": plan.n_gpu_layers,
                              "pred_vram_mib": plan.vram_bytes // MIB, "nvml_mib": (m.get("nvml_worker_bytes") or 0) // MIB,
                              "pred_tps": plan.tokens_per_s, "tps": m.get("tokens_per_s"),
                              "kv_devices": m.get("kv_buffer_devices"), "error": row.get("error")}), flush=True)
            report["kv"].append(row)
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
