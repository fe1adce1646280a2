"""Compare the planner with a GPU sweep (bench/gpu_planner_sweep.py output), with the current
planner code: memory error per configuration, speed error, and the budget checks.

    .venv/bin/python bench/analyse_sweep.py bench/results/gpu/sweep.json [--markdown]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.hardware import GpuInfo, Hardware  # noqa: E402
from core.model_shape import ModelShape  # noqa: E402
from core.planner import evaluate  # noqa: E402

MIB = 1 << 20


def machine(report: dict) -> Hardware:
    g = report["machine"]["gpu"]
    gpu = GpuInfo(index=0, name=g["name"], total_bytes=g["total_bytes"], free_bytes=g["total_bytes"],
                  bandwidth_bytes_per_s=g["bandwidth_bytes_per_s"])
    return Hardware(gpus=(gpu,), ram_total_bytes=128 << 30, ram_available_bytes=120 << 30,
                    cpu_physical_cores=report["machine"]["cores"], llama_gpu_offload=True,
                    ram_bandwidth_bytes_per_s=report["machine"]["ram_bandwidth"])


def rows(report: dict) -> list[dict]:
    hw = machine(report)
    shapes = {k: ModelShape.from_dict(v) for k, v in report["models"].items()}
    out = []
    for r in report["rows"]:
        if r.get("error") or not r.get("nvml_worker_bytes"):
            continue
        plan = evaluate(shapes[r["model"]], hw, r["ngl"], r["ctx"], r["kv"], True)
        measured = r["nvml_worker_bytes"]
        out.append({"model": r["model"], "ngl": r["ngl"], "ctx": r["ctx"], "kv": r["kv"],
                    "measured_mib": measured / MIB, "predicted_mib": plan.vram_bytes / MIB,
                    "error_mib": (plan.vram_bytes - measured) / MIB,
                    "allowed_mib": max(0.03 * measured, 128 * MIB) / MIB,
                    "measured_tps": r["tokens_per_s"], "predicted_tps": plan.tokens_per_s,
                    "tps_error": plan.tokens_per_s / r["tokens_per_s"] - 1})
    return out


ISSUE11_DATA = ROOT / "tests" / "data" / "gpu_sweep_h200_issue11.json"


def issue11(report: dict, path: Path, save: bool) -> int:
    """The issue-11 sweep (bench/gpu_moe_sweep.py): tables for docs/BENCHMARKS.md, the refit MoE
    constants, and with --save the data CI checks (tests/data/gpu_sweep_h200_issue11.json)."""
    import shutil

    from bench.moe_sweep_analysis import constants, markdown, overhead_fit, refit
    from core.planner import Calibration

    print(f"Issue 11 sweep {path} on {report['machine']['gpu']['name'] if report['machine']['gpu'] else 'no GPU'}, "
          f"{len(report['rows'])} configurations, {len(report['budgets'])} budget runs, "
          f"{report.get('total_s', '?')} s\n")
    print(markdown(report))
    print("\nRefit (models marked 'fit'; change these in core/planner.py Calibration, then re-run this):")
    print(json.dumps({"now": constants(Calibration()), "refit": constants(refit(report))}, indent=1))
    fit = overhead_fit(report)
    if fit:
        print(f"per-token decode cost: token_overhead_s={fit['token_overhead_s']:.6f}, "
              f"sampling_s_per_vocab={fit['sampling_s_per_vocab']:.3g}")
    if save:
        if report.get("smoke"):
            print("not saved: a --smoke run is no measurement")
            return 1
        shutil.copyfile(path, ISSUE11_DATA)
        print(f"saved {ISSUE11_DATA}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--save", action="store_true", help="issue 11: keep the sweep in tests/data for CI")
    a = ap.parse_args()
    report = json.loads(a.sweep.read_text())
    if report.get("kind") == "issue11":
        return issue11(report, a.sweep, a.save)
    table = rows(report)
    if a.markdown:
        print("| model | n_gpu_layers | ctx | KV | VRAM measured (MiB) | predicted | error | tok/s measured | predicted | error |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        for t in table:
            print(f"| {t['model']} | {t['ngl']} | {t['ctx']} | {t['kv']} | {t['measured_mib']:.0f} | {t['predicted_mib']:.0f} | "
                  f"{t['error_mib']:+.0f} | {t['measured_tps']:.1f} | {t['predicted_tps']:.1f} | {t['tps_error']:+.0%} |")
    else:
        for t in table:
            print(f"{t['model']:6} ngl={t['ngl']:2} ctx={t['ctx']:5} {t['kv']:5} vram {t['measured_mib']:7.0f} "
                  f"pred {t['predicted_mib']:7.0f} err {t['error_mib']:+6.0f} | tps {t['measured_tps']:6.1f} "
                  f"pred {t['predicted_tps']:6.1f} {t['tps_error']:+.0%}")
    worst_mem = max(abs(t["error_mib"]) for t in table)
    worst_tps = max(abs(t["tps_error"]) for t in table)
    print(f"\n{len(table)} configurations; worst VRAM error {worst_mem:.0f} MiB; worst tokens/s error {worst_tps:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
