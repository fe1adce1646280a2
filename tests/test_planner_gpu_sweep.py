"""The planner against real measurements: a sweep of loads on an H100 (NVML after the first
decode, llama.cpp's buffer sizes, decode tokens/s), recorded by bench/gpu_planner_sweep.py.
CI re-checks the current planner code against it on every run."""
import json
from pathlib import Path

import pytest

from bench.analyse_sweep import machine, rows
from core.model_shape import ModelShape
from core.planner import optimise

DATA = json.loads((Path(__file__).parent / "data" / "gpu_sweep_h100.json").read_text())
ROWS = rows(DATA)
GIB = 1 << 30


def test_sweep_is_substantial():
    assert len(ROWS) >= 30
    assert {r["model"] for r in ROWS} == {"7b", "8b", "70b20"}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model']}-ngl{r['ngl']}-ctx{r['ctx']}-{r['kv']}")
def test_vram_within_3_percent_or_128_mib(row):
    assert abs(row["error_mib"]) <= row["allowed_mib"], row


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model']}-ngl{r['ngl']}-ctx{r['ctx']}-{r['kv']}")
def test_tokens_per_s_within_25_percent(row):
    assert abs(row["tps_error"]) <= 0.25, row


@pytest.mark.parametrize("entry", DATA["budgets"], ids=lambda e: f"{e['model']}-{e['budget_gib']:g}GiB")
def test_budget_plans_stay_under_budget_and_are_fast(entry):
    hw = machine(DATA).with_budget(vram_bytes=int(entry["budget_gib"] * GIB))
    shape = ModelShape.from_dict(DATA["models"][entry["model"]])
    plan = optimise(shape, hw, n_ctx=entry["plan"]["n_ctx"])
    measured = entry["measured"]
    # What the planner chooses today is what was measured then (or the data must be re-recorded).
    assert (plan.n_gpu_layers, plan.kv_type) == (entry["plan"]["n_gpu_layers"], entry["plan"]["kv_type"])
    assert measured["nvml_worker_bytes"] <= entry["budget_gib"] * GIB
    same_model = [r for r in DATA["rows"] if r["model"] == entry["model"] and not r.get("error")
                  and r["nvml_worker_bytes"] <= entry["budget_gib"] * GIB and r["ctx"] >= plan.n_ctx]
    best = max((r["tokens_per_s"] for r in same_model), default=0)
    assert measured["tokens_per_s"] >= 0.95 * best
