"""The planner on the app's load path: auto choices filled in, impossible loads refused before
anything is allocated, the plan kept for the UI."""
from __future__ import annotations

import pytest

from backends.base import LoadSpec, ModelLoadError
from backends.manager import ModelManager
from core.hardware import GIB, Hardware
from core.options import LoadOptions
from backends.load_planning import LoadPlanner

pytestmark = pytest.mark.real_model


def machine(ram_gib: float) -> Hardware:
    return Hardware(gpus=(), ram_total_bytes=int(ram_gib * GIB), ram_available_bytes=int(ram_gib * GIB),
                    cpu_physical_cores=2)


def test_auto_choices_are_filled_in(embedded_model, tmp_path):
    planner = LoadPlanner(tmp_path, lambda: machine(16))
    spec, plan = planner.prepare(LoadSpec(str(embedded_model), LoadOptions()))
    assert spec.options.n_gpu_layers == 0 and spec.options.n_ctx == 4096
    assert plan.fit == "cpu_only" and plan.ram_bytes > 0


def test_a_load_that_cannot_fit_is_refused_before_any_worker_starts(embedded_model, tmp_path):
    planner = LoadPlanner(tmp_path, lambda: machine(1.2))
    manager = ModelManager(planner=planner)
    with pytest.raises(ModelLoadError, match="will not fit.*RAM"):
        manager.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=8192)))
    state = manager.state()
    assert state.status == "failed" and "will not fit" in state.error
    assert manager._backend is None  # no worker was ever started


def test_the_plan_is_kept_with_the_loaded_model(embedded_model, tmp_path):
    planner = LoadPlanner(tmp_path, lambda: machine(16))
    manager = ModelManager(planner=planner)
    try:
        info = manager.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048)))
        state = manager.state()
        assert state.plan is not None and state.plan.n_ctx == info.n_ctx == 2048
        assert planner.learn(info) is None  # no GPU here: nothing to learn, and no error
    finally:
        manager.close()
