"""Several GPUs: each GPU's VRAM predicted vs NVML, tokens/s predicted vs measured at several splits
and contexts, and the automatic plan vs the best split the sweep finds (issue 17).

    python bench/gpu_multi_split.py --model 8b=/tmp/m/l31-8b.gguf --model 70b20=/tmp/m/l70-20.gguf \
        --out /tmp/job/out [--ctx 4096,32768] [--tokens 64] [--deadline-s 420]
    python bench/gpu_multi_split.py --model tiny=model.gguf --out /tmp/x --profile 2x-rtx3090-24g --ctx 512

Every row loads through the app's own path (WorkerBackend: a worker process running llama.cpp with
the options a Load applies: ``split_updates`` of the plan), generates twice (the first warms up),
reads the worker's VRAM on every GPU from NVML after the decode and llama.cpp's buffers per device,
unloads, and compares with ``core.planner.evaluate`` of exactly that split. Then the planner
chooses (``optimise``) for the machine as it is and for per-GPU budgets (it must stay under each).
``--profile`` plans for a described machine while loading on this one: the logic runs on a CPU
(no NVML figures then). Writes multi_split.json under --out after every row.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec  # noqa: E402
from backends.worker_client import WorkerBackend  # noqa: E402
from bench.gpu_measure import MIB, devices_used, measured_load  # noqa: E402
from core.hardware import GIB, Hardware  # noqa: E402
from core.multi_gpu_plan import SplitChoice, split_updates  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from core.plan import Plan  # noqa: E402
from core.planner import Calibration, evaluate, optimise  # noqa: E402


def within(predicted: int, measured: Optional[int]) -> Optional[bool]:
    """The issue's tolerance: |predicted - NVML| <= max(3 % of NVML, 128 MiB)."""
    if measured is None:
        return None
    return abs(predicted - measured) <= max(0.03 * measured, 128 * MIB)


def buffers_by_gpu(buffers: list[dict]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for b in buffers:
        dev = b["device"]
        if dev.startswith("CUDA") and not dev.endswith("_Host") and dev[4:].isdigit():
            slot = out.setdefault(int(dev[4:]), {"model": 0, "KV": 0, "compute": 0})
            if b["kind"] in slot:
                slot[b["kind"]] += int(b["mib"] * MIB)
    return out


def measure(path: str, options: LoadOptions, tokens: int) -> dict:
    info, row = measured_load(WorkerBackend("llama_cpp"), LoadSpec(path, options),
                              SamplingOptions(temperature=0.0, max_tokens=tokens, seed=1), per_gpu=True)
    buffers = [asdict(b) for b in info.buffers]
    return {**row, "buffers": buffers, "gpu_buffers": buffers_by_gpu(buffers)}


def compare(plan: Plan, measured: dict) -> dict:
    """Per GPU: predicted total vs NVML and parts vs llama.cpp's buffers; speed error."""
    per_gpu = []
    nvml = {int(k): v for k, v in measured.get("nvml_worker_bytes", {}).items()}
    bufs = {int(k): v for k, v in measured.get("gpu_buffers", {}).items()}
    for d in plan.devices:
        got = nvml.get(d.index)
        b = bufs.get(d.index, {})
        per_gpu.append({"gpu": d.index, "layers": d.n_layers, "predicted_bytes": d.memory.total, "nvml_bytes": got,
                        "error_mib": None if got is None else round((got - d.memory.total) / MIB, 1),
                        "within": within(d.memory.total, got),
                        "weights": [d.memory.weights, b.get("model")], "kv": [d.memory.kv_cache, b.get("KV")],
                        "compute": [d.memory.compute, b.get("compute")]})
    planned = {d.index for d in plan.devices}
    elsewhere = {i: v for i, v in nvml.items() if i not in planned and v}  # e.g. a context on a GPU "none" skips
    tps = measured.get("tokens_per_s")
    speed_error = None if not tps or not plan.tokens_per_s else round((tps - plan.tokens_per_s) / plan.tokens_per_s, 3)
    return {"per_gpu": per_gpu, "unplanned_gpu_bytes": elsewhere, "speed_error": speed_error,
            "speed_within_25": None if speed_error is None else abs(speed_error) <= 0.25}


def split_grid(n_gpus: int) -> list[SplitChoice]:
    if n_gpus < 2:
        return [SplitChoice("layer", (1.0,)), SplitChoice("none", main_gpu=0)]
    even = tuple([1.0] * n_gpus)
    skew = tuple([3.0] + [1.0] * (n_gpus - 1))
    return [SplitChoice("layer", even), SplitChoice("layer", skew), SplitChoice("layer", tuple(reversed(skew))),
            SplitChoice("none", main_gpu=0), SplitChoice("none", main_gpu=n_gpus - 1), SplitChoice("row", even)]


def budgets_for(hw: Hardware, shape_bytes: int) -> list[tuple[float, ...]]:
    """Per-GPU budgets (GiB) that force a split: unequal, each below the model's size."""
    if len(hw.gpus) < 2:
        return []
    size = shape_bytes / GIB
    return [tuple(round(size * f, 1) for f in ([0.35] + [0.9] * (len(hw.gpus) - 1))),
            tuple(round(size * 0.75, 1) for _ in hw.gpus),
            tuple(round(size * 0.3, 1) for _ in hw.gpus)]  # too small together: layers (or experts) in RAM


def capped(hw: Hardware, gib: tuple[float, ...]) -> Hardware:
    gpus = tuple(replace(g, free_bytes=min(g.free_bytes, int(b * GIB))) for g, b in zip(hw.gpus, gib))
    return replace(hw, gpus=gpus)


def machine(profile: Optional[str]) -> Hardware:
    from services.hardware import load_profile, probe

    if profile:
        path = Path(profile) if Path(profile).suffix else ROOT / "profiles" / f"{profile}.yaml"
        return load_profile(path)
    return probe()


def summary(report: dict) -> dict:
    checks = [g for r in report["rows"] + report["auto"] for g in r.get("check", {}).get("per_gpu", [])]
    judged = [c for c in checks if c["within"] is not None]
    speeds = [r["check"]["speed_within_25"] for r in report["rows"] + report["auto"]
              if r.get("check", {}).get("speed_within_25") is not None]
    ratios = [a["auto_vs_best"] for a in report["auto"] if a.get("auto_vs_best") is not None]
    over = [b for b in report["budgets"] if b.get("over_budget")]
    return {"gpu_rows": len(checks), "gpu_rows_judged": len(judged), "gpu_within": sum(c["within"] for c in judged),
            "max_abs_error_mib": max((abs(c["error_mib"]) for c in judged), default=None),
            "speed_rows": len(speeds), "speed_within_25": sum(speeds),
            "auto_vs_best_min": min(ratios, default=None), "budget_runs": len(report["budgets"]),
            "budget_overruns": len(over)}


def main(argv: Optional[list[str]] = None) -> int:
    from services.model_files import gguf_shape

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ctx", default="4096,32768")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--profile", help="plan for this described machine (CPU tests of the logic)")
    ap.add_argument("--deadline-s", type=float, default=420, help="start no new load after this many seconds")
    ap.add_argument("--budget-only", default="", help="models (comma-separated names) that get only the budget runs")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    hw, cal = machine(a.profile), Calibration()
    report: dict = {"machine": {"gpus": [asdict(g) for g in hw.gpus], "source": hw.source, "summary": hw.gpu_summary,
                                "baseline_used": devices_used()},
                    "rows": [], "auto": [], "budgets": [], "skipped": []}

    def save() -> None:
        report["summary"] = summary(report)
        (a.out / "multi_split.json").write_text(json.dumps(report, indent=1, default=str))

    def late() -> bool:
        return time.monotonic() - t_start > a.deadline_s

    def run(path: str, plan: Plan, tokens: int) -> dict:
        options = LoadOptions(n_ctx=plan.n_ctx, n_gpu_layers=plan.n_gpu_layers, kv_type=plan.kv_type,
                              flash_attn=plan.flash_attn, n_cpu_moe=plan.n_cpu_moe, **split_updates(plan))
        try:
            measured = measure(path, options, tokens)
        except Exception as exc:  # record and go on: one failure must not lose the sweep
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"measured": measured, "check": compare(plan, measured)}

    contexts = [int(c) for c in a.ctx.split(",") if c]
    for item in a.model:
        name, path = item.split("=", 1)
        shape = gguf_shape(Path(path))
        sweep = name not in set(filter(None, a.budget_only.split(",")))
        for ctx in (c for c in contexts if sweep and (not shape.n_ctx_train or c <= shape.n_ctx_train)):
            best = 0.0
            for choice in split_grid(len(hw.gpus)):
                if late():
                    report["skipped"].append({"model": name, "ctx": ctx, "split": asdict(choice), "why": "deadline"})
                    continue
                plan = evaluate(shape, hw, -1, ctx, "f16", True, cal=cal, gpu_split=choice)
                row = {"model": name, "ctx": ctx, "split": asdict(choice), "plan": plan.to_dict()}
                if plan.fit == "no_fit":
                    row["skipped"] = "the planner says it does not fit: " + "; ".join(plan.reasons)
                else:
                    row.update(run(path, plan, a.tokens))
                    best = max(best, row.get("measured", {}).get("tokens_per_s") or 0.0)
                report["rows"].append(row)
                print(json.dumps({"model": name, "ctx": ctx, "split": choice.mode, "weights": choice.weights,
                                  "main": choice.main_gpu, "tps": row.get("measured", {}).get("tokens_per_s"),
                                  "gpus": row.get("check", {}).get("per_gpu"), "error": row.get("error")},
                                 default=str), flush=True)
                save()
            if late():
                continue
            plan = optimise(shape, hw, n_ctx=ctx, kv_types=("f16",), cal=cal)
            entry = {"model": name, "ctx": ctx, "plan": plan.to_dict(), **run(path, plan, a.tokens)}
            tps = entry.get("measured", {}).get("tokens_per_s")
            entry["best_sweep_tokens_per_s"] = best
            entry["auto_vs_best"] = round(tps / best, 3) if tps and best else None
            report["auto"].append(entry)
            print(json.dumps({"auto": name, "ctx": ctx, "split": plan.split_mode, "tensor_split": plan.tensor_split,
                              "tps": tps, "best": best, "ratio": entry["auto_vs_best"]}), flush=True)
            save()
        for gib in budgets_for(hw, shape.weight_bytes):
            if late():
                break
            limited = capped(hw, gib)
            plan = optimise(shape, limited, n_ctx=contexts[0], kv_types=("f16",), cal=cal)
            entry = {"model": name, "budgets_gib": gib, "plan": plan.to_dict()}
            if plan.fit != "no_fit":
                entry.update(run(path, plan, 32))
                nvml = entry.get("measured", {}).get("nvml_worker_bytes", {})
                entry["over_budget"] = [i for i, b in enumerate(gib) if (nvml.get(i) or 0) > b * GIB]
            report["budgets"].append(entry)
            print(json.dumps({"budget": gib, "model": name, "tensor_split": plan.tensor_split, "n_cpu_moe": plan.n_cpu_moe,
                              "over": entry.get("over_budget"), "error": entry.get("error")}), flush=True)
            save()
    save()
    print(json.dumps(report["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
