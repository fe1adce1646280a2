"""bench/gpu_multi_split.py's logic, here where there is no GPU: the tolerance, the comparison of a
plan with what NVML and llama.cpp report per GPU, the split grid, the budgets and the summary."""
from __future__ import annotations

import pytest

from bench.gpu_multi_split import budgets_for, buffers_by_gpu, capped, compare, split_grid, summary, within
from core.hardware import GIB
from core.multi_gpu_plan import SplitChoice
from core.planner import evaluate
from tests.test_multi_gpu_plan import EQUAL_2, UNEQUAL_3, machine

MIB = 1 << 20


def test_tolerance_is_max_of_3_percent_and_128_mib():
    assert within(10 * GIB, 10 * GIB + 300 * MIB) is True       # 3 % of 10 GiB = 307 MiB
    assert within(10 * GIB, 10 * GIB + 320 * MIB) is False
    assert within(1 * GIB, 1 * GIB - 127 * MIB) is True         # small: 128 MiB wins
    assert within(1 * GIB, 1 * GIB - 130 * MIB) is False
    assert within(GIB, None) is None


def test_compare_per_gpu_against_nvml_and_buffers(tmp_path):
    from tools.synth_gguf import write
    from core.model_shape import shape_from_headers
    from services.gguf_file import read_header

    shape = shape_from_headers([read_header(write(tmp_path / "8b.gguf", "llama31-8b", "Q4_K_M", sparse=True))])
    plan = evaluate(shape, EQUAL_2, -1, 4096, gpu_split=SplitChoice("layer", (1.0, 1.0)))
    d0, d1 = plan.devices
    buffers = [{"device": "CUDA0", "kind": "model", "mib": d0.memory.weights / MIB},
               {"device": "CUDA1", "kind": "KV", "mib": 240.0}, {"device": "CUDA_Host", "kind": "compute", "mib": 9.0},
               {"device": "CPU_Mapped", "kind": "model", "mib": 500.0}]
    measured = {"nvml_worker_bytes": {0: d0.memory.total + 100 * MIB, 1: d1.memory.total + 400 * MIB, 2: 0},
                "gpu_buffers": buffers_by_gpu(buffers), "tokens_per_s": plan.tokens_per_s * 0.7}
    check = compare(plan, measured)
    assert [g["within"] for g in check["per_gpu"]] == [True, False]
    assert check["per_gpu"][1]["error_mib"] == 400.0
    assert check["per_gpu"][0]["weights"] == [d0.memory.weights, d0.memory.weights]
    assert check["per_gpu"][1]["kv"][1] == 240 * MIB and check["unplanned_gpu_bytes"] == {}
    assert check["speed_error"] == pytest.approx(-0.3, abs=0.01) and check["speed_within_25"] is False
    assert buffers_by_gpu(buffers) == {0: {"model": int(d0.memory.weights / MIB * MIB), "KV": 0, "compute": 0},
                                       1: {"model": 0, "KV": 240 * MIB, "compute": 0}}


def test_grid_budgets_and_summary():
    grid = split_grid(2)
    assert [c.mode for c in grid] == ["layer", "layer", "layer", "none", "none", "row"]
    assert grid[1].weights == (3.0, 1.0) and grid[4].main_gpu == 1
    assert [c.mode for c in split_grid(1)] == ["layer", "none"]
    assert budgets_for(EQUAL_2, 10 * GIB) == [(3.5, 9.0), (7.5, 7.5), (3.0, 3.0)]
    assert budgets_for(machine(("A", 8, 8, 300)), 10 * GIB) == []
    limited = capped(UNEQUAL_3, (4.0, 100.0, 1.0))
    assert [g.free_bytes for g in limited.gpus] == [4 * GIB, UNEQUAL_3.gpus[1].free_bytes, GIB]
    report = {"rows": [{"check": {"per_gpu": [{"within": True, "error_mib": 10.0}, {"within": False, "error_mib": -300.0}],
                                  "speed_within_25": True}}, {"skipped": "x"}],
              "auto": [{"auto_vs_best": 0.97, "check": {"per_gpu": [{"within": None, "error_mib": None}],
                                                         "speed_within_25": None}}],
              "budgets": [{"over_budget": []}, {"over_budget": [1]}]}
    s = summary(report)
    assert (s["gpu_rows"], s["gpu_rows_judged"], s["gpu_within"], s["max_abs_error_mib"]) == (3, 2, 1, 300.0)
    assert (s["speed_rows"], s["speed_within_25"], s["auto_vs_best_min"], s["budget_overruns"]) == (1, 1, 0.97, 1)
