"""Issue 11 on a real GPU: the planner on MoE and on dense shapes it was not fitted on, layer offload
versus expert offload, contexts up to 128k, the automatic plan at 8/12/16 GiB against the best
configuration the sweep finds, and the engine's own per-token decode cost.

    python3 bench/gpu_moe_sweep.py --models /tmp/m --out /tmp/job/out [--limit-s 520] [--smoke]

Every configuration loads through the app's own path (WorkerBackend: a worker process running the
app's llama.cpp engine), generates twice (the first warms up), reads the worker's VRAM from NVML
after the decode, records llama.cpp's buffers and how many layers' experts it put in host memory,
unloads, and stores the planner's prediction for exactly that configuration (header only) beside
it; a few configurations also get llama.cpp's dry-run compute buffers (the prediction with the dry
run). Writes moe_sweep.json after every row, so a timeout loses nothing. bench/analyse_sweep.py
turns it into the BENCHMARKS table and tests/data/gpu_sweep_h200_issue11.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec  # noqa: E402
from backends.worker_client import WorkerBackend  # noqa: E402
from bench.gpu_measure import device_used, measured_load  # noqa: E402
from core.hardware import GIB  # noqa: E402
from core.load_plan import ModelFacts, applied_options, plan_load  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from core.planner import Calibration, evaluate  # noqa: E402

PROMPT = "Count from one to one hundred, in words, separated by commas:"
# name: (synth shape, quant, varied routing, role). "fit": shapes the constants are (re)fitted on;
# "check": shapes kept out of any fitting, to validate.
MODELS = {
    "a3b": ("qwen3moe-30b-a3b", "Q4_K_M", True, "fit"),
    "a27": ("qwen2moe-a2.7b", "Q4_K_M", True, "check"),
    "q14": ("qwen25-14b", "Q4_K_M", False, "check"),
    "nemo12": ("nemo-12b", "Q4_K_M", False, "check"),
}
# Share of the sweep's time per model (the 17 GiB MoE has the most configurations and the slowest loads).
TIME_SHARE = {"a3b": 0.45, "a27": 0.2, "q14": 0.2, "nemo12": 0.15, "tiny": 1.0}
# Per-token decode cost without weights to speak of: one block, full GPU, vocabularies of 32k-152k.
OVERHEAD_SHAPES = {"v32k": "llama2-7b", "v131k": "nemo-12b", "v152k": "qwen25-14b"}
SMOKE_MODELS = {"tiny": ("tiny-moe", "Q8_0", True, "check")}
BUDGET_MODELS = ("a3b", "a27", "q14", "tiny")


def configs(name: str, n_layer: int, ctx_train: int, smoke: bool) -> list[dict]:
    """What to measure, most important first (the time limit cuts from the end)."""
    full = n_layer + 1
    c = lambda ngl, ctx, kv="f16", moe=0, dry=False: dict(ngl=ngl, ctx=min(ctx, ctx_train), kv=kv,  # noqa: E731
                                                          n_cpu_moe=moe, dry=dry)
    if smoke:
        return [c(full, 512), c(full, 1024, "q8_0", 2), c(2, 512)]
    long = min(131072, ctx_train)
    if name == "a3b":  # layer vs expert offload around 8-16 GiB at the budget runs' context, the issue's rows, long
        return [c(full, 4096, "f16", 16), c(24, 4096), c(full, 4096, "f16", 24), c(full, 4096, "f16", 32), c(36, 4096),
                c(full, 4096, "f16", 8), c(full, 8192), c(30, 16384, "q4_0"), c(12, 8192), c(full, 4096, "f16", 40),
                c(full, long, "q8_0", dry=True), c(full, 32768, "f16", dry=True)]
    if name == "a27":
        return [c(full, 8192), c(full, 4096, "f16", 8), c(full, 4096, "f16", 16), c(12, 4096), c(full, 4096, "f16", 20)]
    return [c(full, 4096, dry=True), c(full, long, "f16", dry=True), c(full, 32768, "q8_0"), c(full // 2, 4096),
            c(3 * full // 4, 16384, "q4_0")]


def measure(path: str, opts: LoadOptions, tokens: int) -> dict:
    info, row = measured_load(WorkerBackend("llama_cpp"), LoadSpec(path, opts),
                              SamplingOptions(temperature=0.0, max_tokens=tokens, seed=1, repeat_penalty=1.0),
                              prompt=PROMPT)
    return {**row, "buffers": [asdict(b) for b in info.buffers], "n_cpu_moe_measured": info.n_cpu_moe,
            "n_gpu_layers_effective": info.n_gpu_layers}


def sweep_row(name, path, shape, cfg, hw, cal, smoke, compute_buffers, log) -> dict:
    opts = LoadOptions(n_ctx=cfg["ctx"], n_gpu_layers=cfg["ngl"], kv_type=cfg["kv"], n_cpu_moe=cfg["n_cpu_moe"],
                       kv_placement="gpu", n_threads=2 if smoke else None)
    row = {"model": name, **cfg}
    t0 = time.monotonic()
    try:
        row.update(measure(path, opts, 24 if smoke else 64))
    except Exception as exc:  # record it and go on: one failure must not lose the sweep
        row["error"] = f"{type(exc).__name__}: {exc}"
    plan = evaluate(shape, hw, cfg["ngl"], cfg["ctx"], cfg["kv"], cal=cal, n_cpu_moe=cfg["n_cpu_moe"])
    row["predicted"] = plan.to_dict()
    if cfg["dry"] and not cfg["n_cpu_moe"] and hw.can_offload:
        dry = compute_buffers(path, cfg["ctx"], cfg["ngl"], cfg["kv"])
        row["dry_run_compute"] = dry
        if dry is not None:
            row["predicted_dry"] = evaluate(shape, hw, cfg["ngl"], cfg["ctx"], cfg["kv"], cal=cal,
                                            compute_override=dry).to_dict()
    row["seconds"] = round(time.monotonic() - t0, 1)
    log(**{k: row.get(k) for k in ("model", "ngl", "ctx", "kv", "n_cpu_moe", "tokens_per_s", "nvml_worker_bytes",
                                   "n_cpu_moe_measured", "seconds", "error")},
        predicted_tps=plan.tokens_per_s, predicted_vram=plan.vram_bytes)
    return row


def budget_run(name, path, shape, budget, hw, cal, log) -> dict:
    plan = plan_load(ModelFacts("llama_cpp", name, shape), hw.with_budget(vram_bytes=int(budget * GIB)), cal)
    entry = {"model": name, "budget_gib": budget, "plan": plan.to_dict()}
    if plan.fit != "no_fit":
        try:
            entry["measured"] = measure(path, applied_options(plan), 64)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
    log(budget=budget, model=name, ngl=plan.n_gpu_layers, n_cpu_moe=plan.n_cpu_moe, kv=plan.kv_type, ctx=plan.n_ctx,
        predicted_tps=plan.tokens_per_s, measured=entry.get("measured", {}).get("nvml_worker_bytes"),
        tps=entry.get("measured", {}).get("tokens_per_s"), error=entry.get("error"))
    return entry


def main() -> int:
    from services.dry_run import compute_buffers
    from services.hardware import probe
    from services.model_files import gguf_shape
    from tools.synth_gguf import write

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, default=Path("/tmp/m"), help="folder for the synthetic GGUFs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit-s", type=float, default=520, help="stop starting new loads after this")
    ap.add_argument("--budgets", default="8,12,16")
    ap.add_argument("--smoke", action="store_true", help="tiny models, a few configurations (a CPU check)")
    a = ap.parse_args()
    started = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    a.models.mkdir(parents=True, exist_ok=True)
    hw = probe()
    cal = Calibration()
    report = {"kind": "issue11", "calibration": asdict(cal), "smoke": a.smoke,
              "machine": {"gpu": asdict(hw.gpus[0]) if hw.gpus else None, "ram_bandwidth": hw.ram_bandwidth_bytes_per_s,
                          "ram_total": hw.ram_total_bytes, "cores": hw.cpu_physical_cores, "cpu": hw.cpu_name,
                          "offload": hw.llama_gpu_offload, "baseline_device_used": device_used()},
              "models": {}, "roles": {}, "rows": [], "budgets": [], "overhead": []}
    out_file = a.out / "moe_sweep.json"

    def save() -> None:
        out_file.write_text(json.dumps(report, indent=1, default=str))

    def log(**fields) -> None:
        print(json.dumps({"t": round(time.monotonic() - started), **fields}, default=str), flush=True)

    models = SMOKE_MODELS if a.smoke else MODELS
    paths = {}
    for name, (shape_name, quant, varied, role) in models.items():
        path = a.models / f"{shape_name}-{quant}{'-vr' if varied else ''}.gguf"
        if not path.exists():
            # sparse: no disk used and nothing written but the header (and, with varied routing, the
            # embeddings and routers); it reads back as zeros, which is all llama.cpp needs
            write(path, shape_name, quant, sparse=True, varied_routing=varied)
        paths[name] = str(path)
        shape = gguf_shape(path)
        report["models"][name], report["roles"][name] = shape.to_dict(), role
        log(model=name, file_gib=round(path.stat().st_size / GIB, 2), written_s=round(time.monotonic() - started, 1))
    save()

    # 1. the engine's own cost per token: one block, everything on the GPU, three vocabularies
    for label, shape_name in ({} if a.smoke else OVERHEAD_SHAPES).items():
        path = a.models / f"{shape_name}-1layer.gguf"
        if not path.exists():
            write(path, shape_name, "Q4_K_M", layers=1, sparse=True)
        shape = gguf_shape(path)
        entry = {"label": label, "n_vocab": shape.n_vocab, "weights_bytes": shape.weight_bytes, "shape": shape.to_dict()}
        try:
            entry.update(measure(str(path), LoadOptions(n_ctx=1024, n_gpu_layers=-1, kv_type="f16"), 128))
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["predicted"] = evaluate(shape, hw, -1, 1024, "f16", cal=cal).tokens_per_s
        report["overhead"].append(entry)
        log(overhead=label, n_vocab=shape.n_vocab, tps=entry.get("tokens_per_s"), error=entry.get("error"))
        save()

    # 2. per model: the sweep (predicted, header only and with the dry run, beside measured), then the
    # automatic plan (the one door) at each budget, loaded as a Load would. Each model gets an equal
    # share of the time left, so a slow one cannot starve the others.
    budget_list = [float(b) for b in a.budgets.split(",") if b] if hw.gpus else ([8.0] if a.smoke else [])
    for index, (name, path) in enumerate(paths.items()):
        left = a.limit_s - (time.monotonic() - started)
        share = TIME_SHARE[name] / sum(TIME_SHARE[n] for n in list(paths)[index:])
        deadline = time.monotonic() + left * share  # what earlier models did not use passes on
        shape = gguf_shape(Path(path))
        work = [("config", cfg) for cfg in configs(name, shape.n_layer, shape.n_ctx_train, a.smoke)]
        budget_work = [("budget", b) for b in budget_list] if name in BUDGET_MODELS else []
        # the budgets first: they are the target most worth having (their comparison rows follow)
        work = budget_work + work
        for kind, item in work:
            if time.monotonic() > deadline:
                log(model=name, skipped=f"{kind} {item}: time share used up")
                continue
            if kind == "config":
                report["rows"].append(sweep_row(name, path, shape, item, hw, cal, a.smoke, compute_buffers, log))
            else:
                report["budgets"].append(budget_run(name, path, shape, item, hw, cal, log))
            save()
    report["total_s"] = round(time.monotonic() - started, 1)
    save()
    log(done=True, rows=len(report["rows"]), budgets=len(report["budgets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
