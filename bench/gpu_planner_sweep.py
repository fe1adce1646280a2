"""Planner accuracy on a real GPU: predicted versus measured VRAM and tokens/s.

    python bench/gpu_planner_sweep.py --model 7b=/tmp/m/l2-7b.gguf --model 8b=/tmp/m/l31-8b.gguf \
        --model 70b20=/tmp/m/l70-20.gguf --out /tmp/job/out [--grid validate | --grid 70b20=near-full]

For every configuration it loads the model through the app's own path (WorkerBackend: a worker
process running llama-cpp-python), generates a reply, reads the worker's VRAM from NVML after
that decode, records llama.cpp's buffer sizes, unloads, and compares with core.planner.evaluate.
Then, for simulated budgets of 8, 12 and 24 GiB, it lets the planner choose (optimise) and checks
that the real use stays under the budget and the speed is >= 95 % of the best configuration of
the sweep that fits. Writes sweep.json (rows + machine) under --out. No network needed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec  # noqa: E402
from backends.worker_client import WorkerBackend  # noqa: E402
from bench.gpu_measure import MIB, device_used, measured_load  # noqa: E402
from core.hardware import GIB  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from core.planner import Calibration, evaluate, optimise  # noqa: E402
from services.hardware import probe  # noqa: E402
from services.dry_run import compute_buffers  # noqa: E402


def measure(path: str, ngl: int, ctx: int, kv: str, tokens: int) -> dict:
    info, row = measured_load(WorkerBackend("llama_cpp"),
                              LoadSpec(path, LoadOptions(n_ctx=ctx, n_gpu_layers=ngl, kv_type=kv, flash_attn=True)),
                              SamplingOptions(temperature=0.0, max_tokens=tokens, seed=1))
    return {**row, "buffers": [asdict(b) for b in info.buffers], "n_gpu_layers_effective": info.n_gpu_layers}


def gpu_buffer_bytes(buffers: list[dict]) -> dict:
    out = {"model": 0, "KV": 0, "compute": 0, "host_compute": 0}
    for b in buffers:
        size = int(b["mib"] * MIB)
        if b["device"].startswith("CUDA") and not b["device"].endswith("_Host"):
            if b["kind"] in out:
                out[b["kind"]] += size
        elif b["kind"] == "compute":
            out["host_compute"] += size
    return out


def grid(n_layer: int, name: str, n_ctx_train: int) -> list[tuple[int, int, str]]:
    """Configurations to measure: ``default`` (the first sweep), ``quick``, ``validate`` (a few per
    model, for models the constants were not fitted on) and ``near-full`` (every n_gpu_layers near
    full offload: where budgets bite)."""
    full = n_layer + 1
    long = min(16384, n_ctx_train)
    if name == "validate":
        return [(0, 4096, "f16"), (full // 2, 4096, "f16"), (full, 4096, "f16"), (full, long, "q8_0"),
                (3 * full // 4, long, "q4_0")]
    if name == "near-full":
        return [(ngl, long, kv) for ngl in range(full - 9, full + 1) for kv in ("f16", "q4_0")]
    steps = sorted({0, 1, full // 4, full // 2, 3 * full // 4, full})
    configs = [(ngl, 4096, "f16") for ngl in steps]
    if name == "default":
        configs += [(full, ctx, kv) for ctx in (4096, 32768) for kv in ("f16", "q8_0", "q4_0")
                    if (ctx, kv) != (4096, "f16")]
        configs += [(full // 2, 16384, kv) for kv in ("f16", "q8_0", "q4_0")]
    return configs


def main() -> int:
    from services.model_files import gguf_shape

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", default="default", help="MODEL=GRID or GRID for all: default, quick, validate, near-full")
    ap.add_argument("--no-dry-runs", action="store_true")
    ap.add_argument("--budgets", default="8,12,24", help="GiB; empty for none")
    ap.add_argument("--budget-models", default="", help="only these models get budget runs (default all)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    hw = probe()
    cal = Calibration()
    report = {"machine": {"gpu": asdict(hw.gpus[0]) if hw.gpus else None, "ram_bandwidth": hw.ram_bandwidth_bytes_per_s,
                          "cores": hw.cpu_physical_cores, "cpu": hw.cpu_name, "offload": hw.llama_gpu_offload,
                          "baseline_device_used": device_used() if hw.gpus else None},
              "models": {}, "rows": [], "budgets": [], "dry_runs": []}

    def save() -> None:
        (a.out / "sweep.json").write_text(json.dumps(report, indent=1, default=str))

    for item in a.model:
        name, path = item.split("=", 1)
        shape = gguf_shape(Path(path))
        report["models"][name] = shape.to_dict()
        grids = dict(g.split("=", 1) for g in a.grid.split(",") if "=" in g)
        chosen = grids.get(name, a.grid if "=" not in a.grid else "default")
        for ngl, ctx, kv in grid(shape.n_layer, chosen, shape.n_ctx_train):
            tokens = 64 if ngl >= shape.n_layer else 24
            t0 = time.monotonic()
            try:
                row = measure(path, ngl, ctx, kv, tokens)
            except Exception as exc:  # record and go on: one failure must not lose the sweep
                row = {"error": f"{type(exc).__name__}: {exc}"}
            plan = evaluate(shape, hw, ngl, ctx, kv, True, cal=cal)
            row.update(model=name, ngl=ngl, ctx=ctx, kv=kv, seconds=round(time.monotonic() - t0, 1),
                       predicted=plan.to_dict())
            report["rows"].append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "ngl", "ctx", "kv", "tokens_per_s", "nvml_worker_bytes",
                                                      "seconds", "error")}), flush=True)
            save()
        # Dry runs: llama.cpp's planned compute buffers versus what the real loads reserved.
        for ngl, ctx, kv in ([] if a.no_dry_runs else grid(shape.n_layer, "quick", shape.n_ctx_train)[-2:]):
            report["dry_runs"].append({"model": name, "ngl": ngl, "ctx": ctx, "kv": kv,
                                       "compute": compute_buffers(path, ctx, ngl, kv)})
        save()
        budget_models = set(filter(None, a.budget_models.split(",")))
        for budget in ([float(b) for b in a.budgets.split(",") if b] if not budget_models or name in budget_models else []):
            limited = hw.with_budget(vram_bytes=int(budget * GIB))
            plan = optimise(shape, limited, n_ctx=16384 if shape.n_ctx_train >= 16384 else None, cal=cal)
            entry = {"model": name, "budget_gib": budget, "plan": plan.to_dict()}
            if plan.fit != "no_fit":
                try:
                    entry["measured"] = measure(path, plan.n_gpu_layers, plan.n_ctx, plan.kv_type, 32)
                except Exception as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
            report["budgets"].append(entry)
            print(json.dumps({"budget": budget, "model": name, "ngl": plan.n_gpu_layers, "kv": plan.kv_type,
                              "measured": entry.get("measured", {}).get("nvml_worker_bytes"),
                              "tps": entry.get("measured", {}).get("tokens_per_s")}), flush=True)
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
