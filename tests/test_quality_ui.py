"""The Models tab's quality check without a browser: a run on the loaded embedded model with its
progress, the result in the Library, Stop keeping nothing, and the admin check."""
from __future__ import annotations

import gradio as gr
import pytest

from backends.base import LoadSpec
from backends.manager import ModelManager
from core.options import LoadOptions
from core.settings import AppSettings
from services.local_models import build_catalog
from services.quality import QualityStore
from ui import library_handlers as lib
from ui import quality_handlers as qh
from ui.context import AppContext

pytestmark = pytest.mark.real_model


class _Request:
    def __init__(self, username=None) -> None:
        self.username = username


@pytest.fixture
def ctx(tmp_path, embedded_model):
    settings = AppSettings(data_dir=tmp_path, auth=(("alice", "password1"), ("bob", "password2")), admins=("alice",))
    manager = ModelManager()
    context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir), hardware=None)
    manager.load(LoadSpec(str(embedded_model.resolve()), LoadOptions(n_ctx=512, n_threads=2)))
    yield context
    manager.close()


def test_run_shows_progress_and_the_result_reaches_the_library(ctx, embedded_model):
    updates = list(qh.run(ctx, _Request("alice"), qh.NO_REFERENCE, 1))
    assert 'id="quality-bar"' in updates[0][0] and updates[0][2] is not None  # the job, for Stop
    progress, result, job = updates[-1]
    assert 'data-done="1" data-total="1"' in progress and job is None
    assert "PPL" in result and "kept with the model" in result
    table, _ = lib.refresh(ctx)
    assert "<th>Quality</th>" in table and "PPL " in table
    assert QualityStore(ctx.settings.data_dir).latest(str(embedded_model.resolve())).windows_done == 1


def test_stop_keeps_nothing(ctx, embedded_model):
    updates = qh.run(ctx, _Request("alice"), qh.NO_REFERENCE, 3)
    for progress, _, job in updates:
        if 'data-done="1"' in progress:
            break
    assert qh.stop(job) == "Stopping after the current window…"
    last = list(updates)[-1]
    assert "stopped after 1/3 windows" in last[1] or "stopped after 2/3 windows" in last[1]
    assert "not kept" in last[1]
    assert QualityStore(ctx.settings.data_dir).results(str(embedded_model.resolve())) == []


def test_only_admins_and_only_with_a_model(ctx):
    with pytest.raises(gr.Error, match="Only an admin"):
        next(qh.run(ctx, _Request("bob"), qh.NO_REFERENCE, 1))
    with pytest.raises(gr.Error, match="not-a-model"):
        next(qh.run(ctx, _Request("alice"), "not-a-model", 1))
    with pytest.raises(gr.Error, match="whole number"):
        next(qh.run(ctx, _Request("alice"), qh.NO_REFERENCE, "x"))
    ctx.manager.unload()
    with pytest.raises(gr.Error, match="Load a model first"):
        next(qh.run(ctx, _Request("alice"), qh.NO_REFERENCE, 1))
