"""The issue-11 GPU sweep (bench/gpu_moe_sweep.py) against the current planner code: VRAM per
configuration (header only, and with llama.cpp's dry-run compute buffers), tokens/s, the automatic
plan at each budget against the best configuration the sweep measured, and a refit of the MoE speed
constants and the per-token decode cost (``core.planner.Calibration``, the one place they live).
Used by bench/analyse_sweep.py and tests/test_gpu_sweep_issue11.py."""
from __future__ import annotations

from dataclasses import asdict, replace
from statistics import mean

from core.hardware import GpuInfo, Hardware
from core.model_shape import ModelShape
from core.planner import Calibration, evaluate, moe_compute_bytes

MIB = 1 << 20
GIB = 1 << 30


def machine(report: dict) -> Hardware:
    m = report["machine"]
    g = m["gpu"]
    gpus = (GpuInfo(index=0, name=g["name"], total_bytes=g["total_bytes"], free_bytes=g["total_bytes"],
                    bandwidth_bytes_per_s=g["bandwidth_bytes_per_s"]),) if g else ()
    ram = m.get("ram_total") or 128 * GIB
    return Hardware(gpus=gpus, ram_total_bytes=ram, ram_available_bytes=ram, cpu_physical_cores=m["cores"],
                    llama_gpu_offload=bool(gpus), ram_bandwidth_bytes_per_s=m["ram_bandwidth"])


def shapes(report: dict) -> dict[str, ModelShape]:
    return {k: ModelShape.from_dict(v) for k, v in report["models"].items()}


def _allowed(measured: int) -> int:
    return max(int(0.03 * measured), 128 * MIB)


def rows(report: dict, cal: Calibration = Calibration()) -> list[dict]:
    """One row per measured configuration, predicted now (header only, and with the dry run)."""
    hw, found = machine(report), shapes(report)
    out = []
    for r in report["rows"]:
        if r.get("error") or not r.get("tokens_per_s"):
            continue
        shape = found[r["model"]]
        plan = evaluate(shape, hw, r["ngl"], r["ctx"], r["kv"], cal=cal, n_cpu_moe=r["n_cpu_moe"])
        measured = r.get("nvml_worker_bytes") or 0  # 0: no NVML (a CPU smoke run): no VRAM check
        row = {"model": r["model"], "role": report["roles"].get(r["model"], "check"), "ngl": r["ngl"],
               "n_cpu_moe": r["n_cpu_moe"], "ctx": r["ctx"], "kv": r["kv"], "moe": shape.is_moe,
               "full": plan.fit == "full_gpu", "vram_measured": bool(measured), "measured_mib": measured / MIB, "predicted_mib": plan.vram_bytes / MIB,
               "error_mib": (plan.vram_bytes - measured) / MIB, "allowed_mib": _allowed(measured) / MIB,
               "measured_tps": r["tokens_per_s"], "predicted_tps": plan.tokens_per_s,
               "tps_error": plan.tokens_per_s / r["tokens_per_s"] - 1,
               "tps_allowed": 0.20 if plan.fit == "full_gpu" else 0.25,
               "experts_in_ram_measured": r.get("n_cpu_moe_measured"), "experts_in_ram_planned": plan.n_cpu_moe}
        if r.get("dry_run_compute") and measured:
            dry = evaluate(shape, hw, r["ngl"], r["ctx"], r["kv"], cal=cal, compute_override=tuple(r["dry_run_compute"]))
            row["dry_error_mib"] = (dry.vram_bytes - measured) / MIB
        out.append(row)
    return out


def budgets(report: dict, cal: Calibration = Calibration()) -> list[dict]:
    """Each budget's automatic plan (as recorded) against the fastest sweep configuration of the same
    model and context whose measured VRAM stayed within the budget."""
    out = []
    for b in report["budgets"]:
        measured = b.get("measured") or {}
        limit = int(b["budget_gib"] * GIB)
        plan = b["plan"]
        candidates = [r for r in report["rows"] if r["model"] == b["model"] and r["ctx"] == plan["n_ctx"]
                      and r.get("tokens_per_s") and r.get("nvml_worker_bytes") and r["nvml_worker_bytes"] <= limit]
        best = max(candidates, key=lambda r: r["tokens_per_s"], default=None)
        speeds = [measured.get("tokens_per_s") or 0] + ([best["tokens_per_s"]] if best else [])
        out.append({"model": b["model"], "budget_gib": b["budget_gib"], "fit": plan["fit"],
                    "plan": f"ngl {plan['n_gpu_layers']}, experts in RAM {plan.get('n_cpu_moe', 0)}, KV {plan['kv_type']}",
                    "planned_tps": plan["tokens_per_s"], "measured_tps": measured.get("tokens_per_s"),
                    "measured_mib": (measured.get("nvml_worker_bytes") or 0) / MIB, "budget_mib": limit / MIB,
                    "within_budget": bool(measured.get("nvml_worker_bytes")) and measured["nvml_worker_bytes"] <= limit,
                    "best": (f"ngl {best['ngl']}, experts in RAM {best['n_cpu_moe']}, KV {best['kv']}" if best else ""),
                    "best_tps": best["tokens_per_s"] if best else None,
                    "ratio": (measured.get("tokens_per_s") or 0) / max(speeds) if max(speeds) else None,
                    "error": b.get("error")})
    return out


def overhead_fit(report: dict, cal: Calibration = Calibration()) -> dict:
    """Per-token decode cost that is not reading weights: seconds = a + b * n_vocab, fitted to the
    one-block rows after taking out what the model already predicts for their weights and KV."""
    hw, points = machine(report), []
    for e in report.get("overhead", []):
        if not e.get("tokens_per_s"):
            continue
        shape = ModelShape.from_dict(e["shape"]) if "shape" in e else None
        predicted_s = 1 / (evaluate(shape, hw, -1, 1024, "f16", cal=cal).tokens_per_s if shape else e["predicted"])
        points.append((e["n_vocab"], 1 / e["tokens_per_s"] - (predicted_s - cal.token_cost_s(e["n_vocab"]))))
    if len(points) < 2:
        return {}
    mx, my = mean(p[0] for p in points), mean(p[1] for p in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / (sum((x - mx) ** 2 for x, _ in points) or 1)
    return {"sampling_s_per_vocab": max(slope, 0.0), "token_overhead_s": max(my - slope * mx, 0.0),
            "points": points}


def refit(report: dict, cal: Calibration = Calibration()) -> Calibration:
    """MoE constants refitted on the rows of the models marked "fit" (the others stay for checking):
    GPU MoE layer cost from full offload, expert-layer cost from expert offload, CPU MoE block cost
    from layer offload, the MoE compute-buffer factor from VRAM. Change them in core/planner.py."""
    found = shapes(report)
    new = cal
    if not report["machine"]["gpu"]:
        return new  # the constants are the GPU's
    fit = overhead_fit(report, cal)  # first: every row's prediction includes the per-token cost
    if fit:
        new = replace(new, sampling_s_per_vocab=fit["sampling_s_per_vocab"], token_overhead_s=fit["token_overhead_s"])
    fit_rows = [r for r in rows(report, new) if r["role"] == "fit" and r["moe"]]
    full = [r for r in fit_rows if r["full"]]
    if full:
        n = found[full[0]["model"]].n_layer
        new = replace(new, gpu_moe_layer_s=max(0.0, new.gpu_moe_layer_s + mean(
            1 / r["measured_tps"] - 1 / r["predicted_tps"] for r in full) / n))
    fit_rows = [r for r in rows(report, new) if r["role"] == "fit" and r["moe"]]
    expert = [r for r in fit_rows if r["n_cpu_moe"] and r["ngl"] > found[r["model"]].n_layer]
    if expert:
        new = replace(new, cpu_moe_layer_s=max(0.0, new.cpu_moe_layer_s + mean(
            (1 / r["measured_tps"] - 1 / r["predicted_tps"]) / r["n_cpu_moe"] for r in expert)))
    layer = [r for r in fit_rows if not r["n_cpu_moe"] and not r["full"]]
    if layer:
        new = replace(new, cpu_moe_block_s=max(0.0, new.cpu_moe_block_s + mean(
            (1 / r["measured_tps"] - 1 / r["predicted_tps"]) / (found[r["model"]].n_layer - r["ngl"] + 1)
            for r in layer)))
    moe_terms = [(r, moe_compute_bytes(found[r["model"]], 512, replace(cal, moe_compute_factor=1.0)))
                 for r in rows(report, new) if r["role"] == "fit" and r["moe"] and r["vram_measured"]]
    if moe_terms:
        new = replace(new, moe_compute_factor=max(0.0, cal.moe_compute_factor + mean(
            -r["error_mib"] * MIB / term for r, term in moe_terms if term)))
    return new


def constants(cal: Calibration) -> dict:
    keys = ("gpu_moe_layer_s", "cpu_moe_layer_s", "cpu_moe_block_s", "moe_compute_factor", "sampling_s_per_vocab",
            "token_overhead_s")
    return {k: v for k, v in asdict(cal).items() if k in keys}


def markdown(report: dict, cal: Calibration = Calibration()) -> str:
    lines = ["| model | role | GPU layers | experts in RAM (planned/measured) | ctx | KV | VRAM measured MiB | predicted "
             "| error | with dry run | tok/s measured | predicted | error |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in rows(report, cal):
        dry = f"{t['dry_error_mib']:+.0f}" if "dry_error_mib" in t else "–"
        vram = (f"{t['measured_mib']:.0f} | {t['predicted_mib']:.0f} | {t['error_mib']:+.0f}" if t["vram_measured"]
                else f"– | {t['predicted_mib']:.0f} | –")
        lines.append(f"| {t['model']} | {t['role']} | {t['ngl']} | {t['experts_in_ram_planned']}/"
                     f"{t['experts_in_ram_measured']} | {t['ctx']} | {t['kv']} | {vram} | {dry} | {t['measured_tps']:.1f} | "
                     f"{t['predicted_tps']:.1f} | {t['tps_error']:+.0%} |")
    lines += ["", "| model | budget GiB | automatic plan | predicted tok/s | measured tok/s | VRAM MiB | "
              "best sweep config within budget | its tok/s | plan / best |", "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    for b in budgets(report, cal):
        ratio = f"{b['ratio']:.0%}" if b["ratio"] is not None else "–"
        lines.append(f"| {b['model']} | {b['budget_gib']:g} | {b['plan']} | {b['planned_tps']:.1f} | "
                     f"{b['measured_tps'] or 0:.1f} | {b['measured_mib']:.0f} | {b['best'] or '–'} | "
                     f"{b['best_tps'] or 0:.1f} | {ratio} |")
    fit = overhead_fit(report, cal)
    if fit:
        lines += ["", f"Per-token decode cost (one-block models): {fit['token_overhead_s'] * 1e6:.0f} µs + "
                      f"{fit['sampling_s_per_vocab'] * 1e9:.2f} ns x vocabulary"]
    return "\n".join(lines)
