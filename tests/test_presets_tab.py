"""Presets tab handlers with the real model catalog and manager (no browser)."""
from __future__ import annotations

import gradio as gr
import pytest

from backends.manager import ModelManager
from core.hardware import Hardware
from core.settings import AppSettings
from services.hardware import probe
from services.local_models import build_catalog
from ui import presets_handlers as h
from ui.context import AppContext

pytestmark = pytest.mark.real_model


@pytest.fixture
def ctx(tmp_path):
    settings = AppSettings(data_dir=tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "hostile.yaml").write_text(
        "name: \"<script>alert(1)</script>\"\nbackend: llama_cpp\nquantization: Q4_0\nmodel: {path: nope.gguf}\n"
        "shape: {n_layer: 2, n_embd: 64, n_head: 2, n_head_kv: 2, n_ff: 128, n_vocab: 100, n_ctx_train: 512, "
        "file_gib: 0.001}\nload: {n_ctx: 512}\n")
    (tmp_path / "presets" / "broken.yaml").write_text("name: x\nbackend: llama_cpp\nextra_key: 1\n")
    manager = ModelManager()
    context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir),
                         hardware=lambda: probe(tmp_path, measure_ram_bandwidth=False))
    yield context
    manager.close()


def test_machines_are_this_one_and_the_profiles(ctx):
    found, errors = h.machines(ctx)
    assert list(found)[0] == h.THIS_MACHINE and errors == []
    assert "What if: RTX 3060 12 GB + 64 GB RAM" in found
    assert all(isinstance(hw, Hardware) for hw in found.values())


def test_refresh_ranks_escapes_and_reports_broken_files(ctx):
    summary, table, problems, dropdown = h.refresh(ctx, "What if: RTX 3060 12 GB + 64 GB RAM", "Fastest")
    assert "RTX 3060" in summary
    assert table.count("<tr data-preset=") == 7 and "Full GPU" in table and "Partial" in table
    assert "GPU + experts of" in table  # the MoE preset runs with expert offload on a 12 GB card
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "broken.yaml" in problems and "extra_key" in problems
    assert dropdown.choices and dropdown.value


@pytest.mark.parametrize("machine,goal", [("Nope", "Fastest"), (h.THIS_MACHINE, "Slowest"), (None, None)])
def test_bad_choices_are_rejected(ctx, machine, goal):
    with pytest.raises(gr.Error):
        h.refresh(ctx, machine, goal)


def test_load_checks_names_and_disk(ctx):
    for bad in ("../../etc/passwd", "nope", None, 3):
        with pytest.raises(gr.Error, match="Pick a preset"):
            h.load_preset(ctx, bad)
    with pytest.raises(gr.Error, match="not on disk yet.*Models tab"):
        h.load_preset(ctx, "llama31-8b-instruct-q4_k_m")


def test_load_the_embedded_preset(ctx):
    status = h.load_preset(ctx, "smollm2-135m-q4_1")
    assert status.startswith("**Ready**") and "SmolLM2 135M" in status
    assert ctx.manager.state().info.n_ctx == 4096
