"""The multi-GPU load options (split_mode, tensor_split, main_gpu) through the options model, the
CLI, the UI's parsing and llama.cpp's parameters; the Resources tab's per-GPU cards; the
transformers prediction spread over GPUs."""
from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr
import pytest
from pydantic import ValidationError

from cli.args import OneLineParser, UsageError, add_option_flags, options_from_args
from core.hardware import GIB
from core.hf_model_shape import ModelDims, tensors_from_dims
from core.hub_fit import plan_transformers
from core.model_shape import shape_from_headers
from core.multi_gpu import llama_split_args
from core.multi_gpu_plan import split_choice, split_updates
from core.options import LoadOptions
from core.placement import LoadedModel, placement_card
from core.planner import optimise
from services.gguf_file import read_header
from tests.test_multi_gpu_plan import EQUAL_2, UNEQUAL_2, machine
from tools.synth_gguf import write
from ui.option_widgets import build_widgets, options_from_values

MIB = 1 << 20


@pytest.fixture(scope="module")
def shape_8b(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("s") / "8b.gguf", "llama31-8b", "Q4_K_M", None, sparse=True)
    return shape_from_headers([read_header(path)], name="8b")


def test_options_model_validates_the_split():
    opts = LoadOptions(split_mode="row", tensor_split=(3, 1), main_gpu=1)
    assert opts.tensor_split == (3.0, 1.0) and opts.main_gpu == 1
    for bad in ({"tensor_split": (0, 0)}, {"tensor_split": (-1, 2)}, {"tensor_split": tuple([1.0] * 17)},
                {"main_gpu": 16}, {"split_mode": "tensor"}):
        with pytest.raises(ValidationError):
            LoadOptions(**bad)


def test_cli_flags():
    parser = OneLineParser()
    names = add_option_flags(parser, LoadOptions)
    args = parser.parse_args(["--split-mode", "layer", "--tensor-split", "3,1", "--main-gpu", "0"])
    opts = options_from_args(LoadOptions, args, names)
    assert (opts.split_mode, opts.tensor_split, opts.main_gpu) == ("layer", (3.0, 1.0), 0)
    with pytest.raises(UsageError, match="numbers separated by commas"):
        parser.parse_args(["--tensor-split", "3;x"])
    with pytest.raises(UsageError):
        options_from_args(LoadOptions, parser.parse_args(["--tensor-split", "0,0"]), names)


def test_ui_widgets_round_trip():
    names = ("split_mode", "tensor_split", "main_gpu")
    widgets = build_widgets(LoadOptions, LoadOptions(tensor_split=(3, 1)), only=names)
    assert widgets["tensor_split"].value == "3,1" and widgets["split_mode"].value == "auto"
    opts = options_from_values(LoadOptions, names, ["row", " 2, 1 ", "1"], "load options")
    assert (opts.split_mode, opts.tensor_split, opts.main_gpu) == ("row", (2.0, 1.0), 1)
    assert options_from_values(LoadOptions, names, ["auto", "auto", "auto"], "o").tensor_split is None
    with pytest.raises(gr.Error, match="Tensor split"):
        options_from_values(LoadOptions, names, ["layer", "three,one", "auto"], "load options")


def test_llama_params_from_options():
    assert llama_split_args("auto", None, None) == (1, None, 0)
    assert llama_split_args("none", None, 1) == (0, None, 1)
    mode, weights, main = llama_split_args("row", (17, 16), 0, max_devices=4)
    assert (mode, weights, main) == (2, (17.0, 16.0, 0.0, 0.0), 0)
    with pytest.raises(ValueError):
        llama_split_args("layer", (1,) * 5, 0, max_devices=4)


def test_plan_becomes_the_options_a_load_applies(shape_8b):
    plan = optimise(shape_8b, EQUAL_2, n_ctx=4096)
    applied = LoadOptions().model_copy(update=split_updates(plan))
    assert (applied.split_mode, applied.tensor_split) == ("layer", plan.tensor_split)
    # planning again with the applied options gives the same placement
    again = optimise(shape_8b, EQUAL_2, n_ctx=4096, gpu_split=split_choice(applied))
    assert [d.n_layers for d in again.devices] == [d.n_layers for d in plan.devices]
    one = optimise(shape_8b, UNEQUAL_2, n_ctx=4096)
    assert split_updates(one) == {"split_mode": "none", "tensor_split": None, "main_gpu": 1}


def test_resources_card_per_gpu_predicted_beside_measured(shape_8b):
    plan = optimise(shape_8b, EQUAL_2, n_ctx=4096)
    d0, d1 = plan.devices
    buffers = (("CUDA0", "model", d0.memory.weights / MIB), ("CUDA1", "model", d1.memory.weights / MIB * 1.1),
               ("CUDA0", "KV", d0.memory.kv_cache / MIB), ("CUDA1", "KV", d1.memory.kv_cache / MIB),
               ("CUDA0", "compute", 300.0), ("CUDA1", "compute", 400.0), ("CPU_Mapped", "model", 500.0))
    model = LoadedModel("8b", 32, 33, True, 4096, "f16", True, buffers=buffers)
    text = placement_card(model, plan, {0: 3 * GIB, 1: None})
    assert "**Split over 2 GPUs**: layer, tensor_split 17,16" in text
    assert "**GPU0 · RTX 3090** — planned 17 layers (blocks 0–16)" in text
    assert "**GPU1 · RTX 3090** — planned 16 layers (blocks 17–31 + output head)" in text
    card1 = text.split("**GPU1 · RTX 3090**")[1]
    assert "| weights |" in card1 and "+10.0 %" in card1 and "driver reading unavailable" in card1
    card0 = text.split("**GPU0 · RTX 3090**")[1].split("**GPU1")[0]
    assert "| total (driver) |" in card0 and "| KV |" in card0 and "+0.0 %" in card0


def test_transformers_prediction_spreads_over_gpus():
    dims = ModelDims("llama", 40, 5120, 40, 40, 128, 13824, 32000, 4096)
    two = machine(("GPU A", 8, 8, 400), ("GPU B", 8, 8, 400))
    plan = plan_transformers(dims, tensors_from_dims(dims), two, "nf4")
    assert plan.fit == "full_gpu" and len(plan.devices) == 2
    assert set(plan.extra["max_memory"]) == {0, 1, "cpu"}
    assert sum(d.n_blocks for d in plan.devices) == 40 and any("over 2 GPUs" in r for r in plan.reasons)
    one = plan_transformers(dims, tensors_from_dims(dims), machine(("GPU A", 8, 8, 400)), "nf4")
    assert one.fit == "partial" and not one.devices


def test_load_planner_applies_the_plan_and_refuses_a_split_for_gpus_that_are_not_there(tmp_path, shape_8b):
    from backends.base import LoadSpec, ModelLoadError
    from backends.load_planning import LoadPlanner

    path = write(tmp_path / "8b.gguf", "llama31-8b", "Q4_K_M", None, sparse=True)
    planner = LoadPlanner(tmp_path, lambda: EQUAL_2)
    spec, plan = planner.prepare(LoadSpec(str(path), LoadOptions(n_ctx=4096)))
    assert spec.options.split_mode == "layer" and spec.options.tensor_split == plan.tensor_split == (17.0, 16.0)
    spec, plan = planner.prepare(LoadSpec(str(path), LoadOptions(n_ctx=4096, split_mode="none", main_gpu=1)))
    assert (spec.options.split_mode, spec.options.main_gpu, spec.options.tensor_split) == ("none", 1, None)
    with pytest.raises(ModelLoadError, match="3 entries but this machine has 2 GPUs"):
        planner.prepare(LoadSpec(str(path), LoadOptions(tensor_split=(1, 1, 1))))


def test_the_engine_loads_the_embedded_model_with_split_options():
    """On this CPU-only build the split options reach llama.cpp (one device: nothing to split) and
    the real model still loads and answers."""
    from backends.base import LoadSpec
    from backends.llama_cpp_engine import LlamaCppEngine
    from backends.llama_params import model_params
    from services.paths import embedded_model_path

    opts = LoadOptions(n_ctx=512, split_mode="row", tensor_split=(3, 1), main_gpu=1)
    keep: list = []
    params = model_params(opts, -1, keep)
    assert (params.split_mode, params.main_gpu) == (2, 1)
    assert [params.tensor_split[i] for i in range(3)] == [3.0, 1.0, 0.0] and keep
    assert not model_params(LoadOptions(), -1, []).tensor_split  # auto: llama.cpp's own split
    opts = LoadOptions(n_ctx=512, split_mode="layer", tensor_split=(1,), main_gpu=0)
    engine = LlamaCppEngine()
    try:
        info = engine.load(LoadSpec(str(embedded_model_path()), opts))
        assert info.n_ctx == 512
    finally:
        engine.unload()


def test_plan_command_prints_every_gpu_and_takes_the_split(tmp_path, capsys):
    from cli.plan import run

    path = write(tmp_path / "8b.gguf", "llama31-8b", "Q4_K_M", None, sparse=True)
    assert run([str(path), "--profile", "2x-rtx3090-24g", "--tensor-split", "3,1", "--no-dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Machine   2 × NVIDIA GeForce RTX 3090" in out
    assert "  GPU0  " in out and "25 layers (blocks 0-24)" in out and "8 layers (blocks 25-31 + output)" in out
    assert "tensor_split 3,1" in out
    with pytest.raises(UsageError, match="3 entries but this machine has 2 GPUs"):
        run([str(path), "--profile", "2x-rtx3090-24g", "--tensor-split", "1,1,1"])


def test_a_preset_fixes_the_split_and_its_plan_keeps_it():
    from core.preset_plans import plan_preset
    from core.presets import parse_preset
    from services.yaml_files import load_data_file

    root = Path(__file__).resolve().parent.parent
    data = load_data_file(root / "presets" / "llama31-8b-instruct-q4_k_m.yaml")
    data["load"] = {**data["load"], "split_mode": "layer", "tensor_split": [3, 1]}
    preset = parse_preset(data, "split.yaml")
    ranked = plan_preset("split", preset, EQUAL_2, [], lambda *a: None)
    assert ranked.plan is not None and ranked.plan.tensor_split == (3.0, 1.0)
    assert [d.n_layers for d in ranked.plan.devices] == [25, 8]
    data["load"]["tensor_split"] = [1, 1, 1]
    ranked = plan_preset("split", parse_preset(data, "split.yaml"), EQUAL_2, [], lambda *a: None)
    assert ranked.plan is None and "3 entries but this machine has 2 GPUs" in ranked.problem
    with pytest.raises(ValueError, match="tensor_split"):
        parse_preset({**data, "load": {**data["load"], "tensor_split": [0, 0]}}, "bad.yaml")
