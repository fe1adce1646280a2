"""Mixture-of-experts models in the shape and the planner: expert facts from real GGUF headers
(synthetic files with the shapes of Qwen3-30B-A3B and Qwen1.5-MoE-A2.7B), bad headers refused with a
clear message, memory per placement (layer offload, expert offload), speed from the bytes a token
reads, and the optimiser choosing expert offload when it is faster, on described machines."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from backends.base import LoadSpec, ModelLoadError
from backends.load_planning import LoadPlanner
from core.gguf_header import GGUFError, GGUFHeader, TensorInfo
from core.hardware import GIB, GpuInfo, Hardware
from core.load_plan import ModelFacts, applied_options, plan_load, same_placement
from core.model_shape import shape_from_headers
from core.options import LoadOptions
from core.planner import evaluate
from services.gguf_file import read_header
from tools.synth_gguf import write


def gpu_machine(vram_gib: float, ram_gib: float = 64, cores: int = 8, ram_bw: float = 60e9) -> Hardware:
    gpu = GpuInfo(0, f"GPU {vram_gib:g} GiB", int(vram_gib * GIB), int(vram_gib * GIB), bandwidth_bytes_per_s=360e9)
    return Hardware(gpus=(gpu,), ram_total_bytes=int(ram_gib * GIB), ram_available_bytes=int(ram_gib * GIB),
                    cpu_physical_cores=cores, ram_bandwidth_bytes_per_s=ram_bw, llama_gpu_offload=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {name: write(root / f"{name}.gguf", name, "Q4_K_M", sparse=True)
            for name in ("qwen3moe-30b-a3b", "qwen2moe-a2.7b", "nemo-12b")}


@pytest.fixture(scope="module")
def shapes(files):
    return {name: shape_from_headers([read_header(path)], name=name) for name, path in files.items()}


def test_expert_facts_come_from_the_metadata_and_the_tensor_table(shapes):
    a3b, a27, dense = shapes["qwen3moe-30b-a3b"], shapes["qwen2moe-a2.7b"], shapes["nemo-12b"]
    assert (a3b.n_expert, a3b.n_expert_used, a3b.n_ff_exp, a3b.head_dim_k) == (128, 8, 768, 128)
    assert (a27.n_expert, a27.n_expert_used, a27.n_ff_exp) == (60, 4, 1408)
    assert a3b.is_moe and a27.is_moe and not dense.is_moe and dense.expert_bytes == ()
    # the experts are most of the weights; a token reads a small part of them
    assert 0.9 < sum(a3b.expert_bytes) / sum(a3b.block_bytes) < 1
    active = sum(a3b.active_block_bytes(i) for i in range(a3b.n_layer))
    assert active < 0.12 * sum(a3b.block_bytes)
    assert all(dense.active_block_bytes(i) == dense.block_bytes[i] for i in range(dense.n_layer))


def _header(count, used, experts_dim=None, ff=768, meta_ff=768, with_tensors=True) -> GGUFHeader:
    meta = {"general.architecture": "qwen3moe", "qwen3moe.block_count": 1, "qwen3moe.embedding_length": 256,
            "qwen3moe.attention.head_count": 4, "qwen3moe.context_length": 4096,
            "qwen3moe.expert_feed_forward_length": meta_ff}
    if count is not None:
        meta["qwen3moe.expert_count"] = count
    if used is not None:
        meta["qwen3moe.expert_used_count"] = used
    n = experts_dim if experts_dim is not None else (count if isinstance(count, int) and 0 < count < 1000 else 8)
    tensors = [TensorInfo("blk.0.attn_q.weight", (256, 256), 0, 0, 256 * 256 * 4)]
    if with_tensors:
        tensors += [TensorInfo("blk.0.ffn_gate_exps.weight", (256, ff, n), 0, 0, 256 * ff * n * 4),
                    TensorInfo("blk.0.ffn_down_exps.weight", (ff, 256, n), 0, 0, 256 * ff * n * 4)]
    return GGUFHeader(3, meta, tuple(tensors), 32, 0)


@pytest.mark.parametrize("header,message", [
    (_header(0, 0), "expert_count is 0"),
    (_header(10**6, 8), "expert_count is 1000000"),
    (_header(8, 9), "expert_used_count is 9"),
    (_header(8, 0), "expert_used_count is 0"),
    (_header(None, 2), "no integer qwen3moe.expert_count"),
    (_header(8, 2, experts_dim=16), "metadata says 8 experts"),
    (_header(8, 2, ff=512), "FFN lengths \\[512\\] but the metadata says"),
    (_header(8, 2, with_tensors=False), "no expert tensors"),
])
def test_bad_moe_headers_get_a_clear_error(header, message):
    with pytest.raises(GGUFError, match=message):
        shape_from_headers([header])


def test_a_bad_moe_file_is_refused_by_the_load_planner(tmp_path):
    import gguf

    bad = tmp_path / "bad-moe.gguf"
    write(bad, "tiny-moe", "F16", sparse=True)
    data = bad.read_bytes()
    # rewrite expert_used_count (2) as 9 (> 8 experts): same length, so the file stays valid GGUF
    key = b"qwen3moe.expert_used_count"
    at = data.index(key) + len(key) + 4  # after the key and its value type
    assert int.from_bytes(data[at:at + 4], "little") == 2
    bad.write_bytes(data[:at] + (9).to_bytes(4, "little") + data[at + 4:])
    assert gguf.GGUFReader(str(bad)).fields[key.decode()].parts[-1][0] == 9
    with pytest.raises(ModelLoadError, match="expert_used_count is 9"):
        LoadPlanner(tmp_path, lambda: gpu_machine(12)).prepare(LoadSpec(str(bad), LoadOptions()))


def test_expert_offload_moves_exactly_the_experts_of_the_first_layers(shapes):
    s, hw = shapes["qwen3moe-30b-a3b"], gpu_machine(80)
    full = evaluate(s, hw, -1, 4096)
    for n in (1, 16, s.n_layer):
        plan = evaluate(s, hw, -1, 4096, n_cpu_moe=n)
        moved = sum(s.expert_bytes[:n])
        assert plan.gpu.weights == full.gpu.weights - moved and plan.cpu.weights == full.cpu.weights + moved
        assert plan.gpu.kv_cache == full.gpu.kv_cache and plan.n_cpu_moe == n and plan.n_gpu_layers == s.n_layer + 1
        assert plan.fit == "partial" and "experts of" in plan.fit_label
    # with layer offload, experts of blocks already on the CPU move nowhere
    layer = evaluate(s, hw, 30, 4096)
    both = evaluate(s, hw, 30, 4096, n_cpu_moe=10)
    assert both.gpu.weights == layer.gpu.weights and both.n_cpu_moe == 0
    # a dense model has no experts to offload
    dense = shapes["nemo-12b"]
    assert evaluate(dense, hw, -1, 4096, n_cpu_moe=8).gpu == evaluate(dense, hw, -1, 4096).gpu


def test_speed_follows_the_bytes_a_token_reads(shapes):
    s, hw = shapes["qwen3moe-30b-a3b"], gpu_machine(80)
    as_dense = replace(s, n_expert=0, n_expert_used=0, expert_bytes=())
    moe, dense = evaluate(s, hw, -1, 4096), evaluate(as_dense, hw, -1, 4096)
    assert moe.vram_bytes >= dense.vram_bytes  # same bytes held (plus the MoE compute buffers)
    assert moe.tokens_per_s > 2.5 * dense.tokens_per_s  # a 3B-active model decodes like one
    # each layer of experts moved to RAM costs speed, but far less than moving whole layers
    speeds = [evaluate(s, hw, -1, 4096, n_cpu_moe=n).tokens_per_s for n in (0, 8, 16, 32)]
    assert speeds == sorted(speeds, reverse=True)


@pytest.mark.parametrize("vram", [8, 12, 16])
def test_the_optimiser_picks_expert_offload_when_it_is_faster_and_says_why(shapes, vram):
    s, hw = shapes["qwen3moe-30b-a3b"], gpu_machine(vram)
    plan = plan_load(ModelFacts("llama_cpp", "a3b", s), hw)
    layers_only = plan_load(ModelFacts("llama_cpp", "a3b", s), hw, options=LoadOptions(n_cpu_moe=0))
    assert plan.fit == "partial" and plan.n_cpu_moe > 0 and plan.n_gpu_layers == s.n_layer + 1
    assert plan.tokens_per_s > layers_only.tokens_per_s and layers_only.n_cpu_moe == 0
    assert any(r.startswith("expert offload") and "faster than the best layer offload" in r for r in plan.reasons)
    assert plan.vram_bytes <= hw.gpus[0].free_bytes


def test_given_choices_are_kept_and_the_rest_optimised(shapes):
    s, hw = shapes["qwen3moe-30b-a3b"], gpu_machine(12)
    facts = ModelFacts("llama_cpp", "a3b", s)
    fixed = plan_load(facts, hw, options=LoadOptions(n_cpu_moe=30, kv_type="f16"))
    assert fixed.n_cpu_moe == 30 and fixed.kv_type == "f16" and fixed.n_gpu_layers == s.n_layer + 1
    # layers fixed, experts automatic: the fewest expert layers in RAM that fit
    chosen = plan_load(facts, hw, options=LoadOptions(n_gpu_layers=-1, kv_type="f16"))
    assert chosen.fit != "no_fit" and chosen.n_cpu_moe > 0
    assert plan_load(facts, hw, options=LoadOptions(n_gpu_layers=-1, kv_type="f16",
                                                    n_cpu_moe=chosen.n_cpu_moe - 1)).fit == "no_fit"
    # a dense model ignores the option
    dense = plan_load(ModelFacts("llama_cpp", "nemo", shapes["nemo-12b"]), hw, options=LoadOptions(n_cpu_moe=5))
    assert dense.n_cpu_moe == 0


def test_the_load_executes_the_expert_placement_the_screen_showed(files, tmp_path):
    hw = gpu_machine(12)
    planner = LoadPlanner(tmp_path, lambda: hw)
    path = str(files["qwen3moe-30b-a3b"])
    shown = planner.planning.plan(planner.planning.facts(path))
    spec, executed = planner.prepare(LoadSpec(path, applied_options(shown)))
    assert shown.n_cpu_moe > 0 and same_placement(shown, executed) and spec.options.n_cpu_moe == shown.n_cpu_moe
    spec, automatic = planner.prepare(LoadSpec(path))
    assert same_placement(shown, automatic) and spec.options.n_cpu_moe == shown.n_cpu_moe


def test_app_py_plan_shows_where_the_experts_go(files):
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    def plan(*args):
        return subprocess.run([sys.executable, "app.py", "plan", str(files["qwen3moe-30b-a3b"]), "--profile",
                               "rtx3060-12g", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = plan()
    assert out.returncode == 0 and "experts of" in out.stdout and "expert offload (" in out.stdout, out.stdout
    data = json.loads(plan("--n-cpu-moe", "30", "--json").stdout)
    assert data["n_cpu_moe"] == 30 and data["n_gpu_layers"] == 49
    bad = plan("--n-cpu-moe", "-3")
    assert bad.returncode == 2 and "n_cpu_moe" in bad.stderr and "Traceback" not in bad.stderr


def test_an_moe_preset_is_planned_as_moe_before_its_download(shapes):
    from core.presets import PresetError, parse_preset, shape_from_hint
    from services.presets_loader import load_presets
    from tests.conftest import ROOT

    preset = load_presets([ROOT / "presets"])[0]["qwen3-30b-a3b-instruct-q4_k_m"]
    hinted = shape_from_hint(preset.shape, preset.name, preset.quantization)
    real = shapes["qwen3moe-30b-a3b"]
    assert hinted.is_moe and abs(sum(hinted.expert_bytes) - sum(real.expert_bytes)) < 0.02 * sum(real.expert_bytes)
    plan = plan_load(ModelFacts("llama_cpp", "hint", hinted, exact=False), gpu_machine(12))
    assert plan.n_cpu_moe > 0
    data = {"name": "p", "backend": "llama_cpp", "quantization": "Q4_K_M", "model": {"repo": "a/b"},
            "shape": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_head_kv": 2, "n_ff": 128, "n_vocab": 100,
                      "n_ctx_train": 512, "file_gib": 0.1, "n_expert": 8, "n_expert_used": 9, "n_ff_exp": 32}}
    with pytest.raises(PresetError, match="n_expert_used <= n_expert"):
        parse_preset(data, "p.yaml")
