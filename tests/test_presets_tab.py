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
    # 4 TB of weights: no machine here holds it, whatever it has.
    (tmp_path / "presets" / "huge.yaml").write_text(
        "name: Huge\nbackend: llama_cpp\nquantization: Q4_0\nmodel: {repo: someone/huge-GGUF, file: huge.gguf}\n"
        "shape: {n_layer: 200, n_embd: 32768, n_head: 128, n_head_kv: 8, n_ff: 131072, n_vocab: 100000, "
        "n_ctx_train: 8192, file_gib: 4000}\nload: {n_ctx: 4096}\n")
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
    assert table.count("<tr data-preset=") == 8 and "Full GPU" in table and "Partial" in table
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


def test_load_the_embedded_preset_and_its_sampling_values(ctx):
    status, *sampling = h.load_preset(ctx, "smollm2-135m-q4_1")
    assert status.startswith("**Ready**") and "SmolLM2 135M" in status
    assert ctx.manager.state().info.n_ctx == 4096
    # the YAML's temperature 0.4 and repeat_penalty 1.1 reach the chat's sliders; the rest stays the user's
    values = dict(zip(h.SAMPLING_FIELDS, sampling))
    assert values.pop("temperature") == 0.4 and values.pop("repeat_penalty") == 1.1
    assert all(isinstance(v, type(gr.skip())) for v in values.values())


def test_a_preset_that_does_not_fit_shows_no_plan_and_cannot_be_loaded(ctx):
    _, table, _, _ = h.refresh(ctx, h.THIS_MACHINE, "Fastest")
    row = next(r for r in table.split("<tr ") if 'data-preset="user/huge"' in r)
    cells = row.split("<td>")[1:]
    assert "Does not fit" in cells[1]
    assert [c.split("</td>")[0] for c in cells[2:8]] == ["–"] * 6  # no layers, context, VRAM, RAM, tokens/s
    assert "GiB" in cells[8]  # the reasons still say why
    with pytest.raises(gr.Error, match="cannot run on this machine") as refused:
        h.load_preset(ctx, "user/huge")
    assert "not on disk yet" not in str(refused.value) and "Models tab" not in str(refused.value)
