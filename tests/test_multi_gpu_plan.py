"""Planning across several GPUs: table tests on described two- and three-GPU machines (equal and
unequal), llama.cpp's layer-assignment rule, the user's fixed choices, and a probe of two GPUs
through the fake NVML feeding the planner (there is no GPU here; the planner itself is real)."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core.hardware import GIB, Hardware, gpu_summary
from core.hardware_profile import parse_profile
from core.model_shape import shape_from_headers
from core.multi_gpu import Split, counts_of, evaluate_split, layer_devices
from core.multi_gpu_plan import SplitChoice, fastest_split
from core.planner import evaluate, evaluate_as_asked, optimise
from services import hardware as hardware_service
from services.gguf_file import read_header
from tests.fake_nvml import MIB, FakeNvml, gpu
from tools.synth_gguf import write

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    out = {}
    for name, shape in (("8b", "llama31-8b"), ("13b", "llama2-13b"), ("70b", "llama31-70b")):
        path = write(folder / f"{name}.gguf", shape, "Q4_K_M", None, sparse=True)
        out[name] = shape_from_headers([read_header(path)], name=name)
    return out


def machine(*gpus: tuple[str, float, float, float], ram: float = 64) -> Hardware:
    """``(name, vram GiB, free GiB, bandwidth GB/s)`` per GPU."""
    data = {"name": "test", "ram_gib": ram, "cpu_cores": 8, "ram_bandwidth_gb_s": 45,
            "gpus": [{"name": n, "vram_gib": v, "free_vram_gib": f, "bandwidth_gb_s": b, "pcie_gen": 4,
                      "pcie_lanes": 16} for n, v, f, b in gpus]}
    return parse_profile(data, "test").to_hardware("test")


def profile(name: str) -> Hardware:
    from services.hardware import load_profile
    return load_profile(ROOT / "profiles" / f"{name}.yaml")


EQUAL_2 = machine(("RTX 3090", 24, 23.4, 936), ("RTX 3090", 24, 23.4, 936))
UNEQUAL_2 = machine(("RTX 3060", 12, 11.4, 360), ("RTX 4070", 12, 11.8, 504))
EQUAL_3 = machine(*[("RTX 4060 Ti", 16, 15.5, 288)] * 3)
UNEQUAL_3 = machine(("RTX 3090", 24, 23.0, 936), ("RTX 3060", 12, 11.5, 360), ("RTX 3060", 12, 6.0, 360))


def _layers(plan) -> dict[int, int]:
    return {d.index: d.n_layers for d in plan.devices}


def _within_budget(plan) -> bool:
    return all(d.memory.total <= d.usable_bytes for d in plan.devices)


@pytest.mark.parametrize("model,hw,ctx,fit,mode,layers", [
    # fits one GPU; equal GPUs: the split is as fast (within 2 %) and leaves more room on each
    ("8b", EQUAL_2, 8192, "full_gpu", "layer", {0: 17, 1: 16}),
    # needs both 24 GB GPUs
    ("70b", EQUAL_2, 4096, "full_gpu", "layer", {0: 41, 1: 40}),
    # unequal: the faster RTX 4070 alone holds the 8B model: no hand-over, no second context
    ("8b", UNEQUAL_2, 4096, "full_gpu", "none", {1: 33}),
    # 13B needs both 12 GB GPUs only at a long context
    ("13b", UNEQUAL_2, 4096, "full_gpu", "none", {1: 41}),
    ("70b", UNEQUAL_2, 4096, "partial", "layer", None),
    # three slow GPUs: a row split reads a third of each matrix on each, predicted > 25 % faster
    ("70b", EQUAL_3, 4096, "full_gpu", "row", {0: 27, 1: 27, 2: 27}),
    ("13b", EQUAL_3, 4096, "full_gpu", "row", {0: 14, 1: 14, 2: 13}),
    # unequal 3: the RTX 3090 (fast, big) takes what it can; the half-full 3060 the least
    ("70b", UNEQUAL_3, 4096, "partial", "layer", {0: 46, 1: 21, 2: 8}),
])
def test_table(shapes, model, hw, ctx, fit, mode, layers):
    plan = optimise(shapes[model], hw, n_ctx=ctx)
    assert plan.fit == fit, plan.reasons
    assert plan.split_mode == mode
    assert _within_budget(plan)
    assert sum(d.n_layers for d in plan.devices) == plan.n_gpu_layers
    if layers is not None:
        assert {i: n for i, n in _layers(plan).items() if n} == layers
    # the split given to llama.cpp reproduces exactly the planned layers per GPU
    if mode != "none":
        placed = counts_of(layer_devices(plan.n_layer, plan.n_gpu_layers, plan.tensor_split), len(hw.gpus))
        assert placed == tuple(d.n_layers for d in plan.devices)
    # the plan's GPU total is the sum of the GPUs
    assert plan.gpu.total == sum(d.memory.total for d in plan.devices)
    assert any(f"tensor_split" in r or "split_mode none" in r for r in plan.reasons)


def test_unequal_three_gpus_fill_by_room_and_speed(shapes):
    plan = optimise(shapes["70b"], UNEQUAL_3, n_ctx=4096)
    by = _layers(plan)
    assert by[0] > by[1] > by[2] > 0  # the 3090 most; the half-full 3060 least
    # the half-full GPU is within budget by its own free memory, not its total
    assert plan.devices[2].usable_bytes < 6 * GIB and plan.devices[2].memory.total <= plan.devices[2].usable_bytes


def test_unequal_two_gpus_fastest_first_when_the_model_needs_both(shapes):
    # 13B at a long context: more than one 12 GB GPU; the faster 4070 gets more than its memory share
    plan = optimise(shapes["13b"], replace(UNEQUAL_2, ram_available_bytes=64 * GIB), n_ctx=4096,
                    kv_types=("f16",), gpu_split=SplitChoice(mode="layer"))
    assert plan.split_mode == "layer" and plan.fit == "full_gpu"
    by = _layers(plan)
    assert by[1] >= by[0]
    assert any("fastest first" in r or "by free memory" in r for r in plan.reasons)


@pytest.mark.parametrize("n_layer,ngl,weights,expected", [
    (4, 5, (1, 1), (0, 0, 0, 1, 1)),       # 5 layers 50/50: layer j goes where cumulative > j/5: 3 and 2
    (4, 5, (2, 3), (0, 0, 1, 1, 1)),
    (4, 5, (3, 2), (0, 0, 0, 1, 1)),
    (4, 3, (1, 1), (-1, -1, 0, 0, 1)),     # 3 layers offloaded: the first two blocks stay on the CPU
    (4, 5, (0, 1), (1, 1, 1, 1, 1)),
    (80, 81, (41, 40), tuple([0] * 41 + [1] * 40)),
    (4, 0, (1, 1), (-1,) * 5),
])
def test_layer_devices_follow_llama_cpp(n_layer, ngl, weights, expected):
    assert layer_devices(n_layer, ngl, weights) == expected


@pytest.mark.parametrize("counts", [(17, 16), (1, 32), (33, 0), (11, 11, 11), (27, 27, 27), (5, 0, 28), (40, 41)])
def test_integer_counts_place_exactly_that_many_layers(counts):
    total = sum(counts)
    assert counts_of(layer_devices(total - 1, total, counts), len(counts)) == counts


def test_user_split_applies_exactly(shapes):
    plan = evaluate_as_asked(shapes["70b"], EQUAL_2, -1, 4096, gpu_split=SplitChoice("layer", (3.0, 1.0)))
    assert plan.tensor_split == (3.0, 1.0) and plan.split_mode == "layer"
    # 3:1 of 81 layers overfills GPU0: told, not silently changed
    assert plan.fit == "no_fit" and any("GPU0" in r for r in plan.reasons)
    ok = evaluate(shapes["8b"], EQUAL_2, -1, 4096, gpu_split=SplitChoice("layer", (3.0, 1.0)))
    assert ok.fit == "full_gpu" and _layers(ok) == {0: 25, 1: 8}


def test_split_mode_none_uses_the_main_gpu_alone(shapes):
    plan = optimise(shapes["8b"], EQUAL_2, n_ctx=4096, gpu_split=SplitChoice("none", main_gpu=1))
    assert plan.split_mode == "none" and plan.main_gpu == 1
    assert [d.index for d in plan.devices] == [1] and plan.devices[0].n_layers == 33
    # one GPU: one CUDA context, not two
    assert plan.gpu.overhead == plan.devices[0].memory.overhead


def test_row_split_cuts_matrices_across_gpus(shapes):
    row = evaluate(shapes["70b"], EQUAL_2, -1, 4096, gpu_split=SplitChoice("row", (1.0, 1.0)))
    layer = evaluate(shapes["70b"], EQUAL_2, -1, 4096, gpu_split=SplitChoice("layer", (1.0, 1.0)))
    assert row.split_mode == "row"
    # the weights are shared about equally either way; row puts the main GPU's activations on GPU0
    assert abs(row.devices[0].memory.weights - row.devices[1].memory.weights) < 0.05 * row.gpu.weights
    assert row.devices[0].memory.compute > row.devices[1].memory.compute
    assert abs(row.gpu.weights - layer.gpu.weights) < 0.01 * layer.gpu.weights


def test_pipeline_parallel_copies_grow_with_context(shapes):
    def compute(ctx, ngl):
        return evaluate_split(shapes["8b"], EQUAL_2, ngl, ctx, Split("layer", (1.0, 1.0))).devices[0].memory.compute
    # all layers on the GPUs: 4 copies of the inputs (KQ mask included); one layer on the CPU: one
    assert compute(32768, 33) - compute(4096, 33) > compute(32768, 32) - compute(4096, 32) > 0


def test_bad_choices_are_clear_errors(shapes):
    with pytest.raises(ValueError, match="3 entries but this machine has 2 GPUs"):
        optimise(shapes["8b"], EQUAL_2, gpu_split=SplitChoice("layer", (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="main_gpu 2 does not exist"):
        optimise(shapes["8b"], EQUAL_2, gpu_split=SplitChoice("none", main_gpu=2))


def test_nothing_fits_says_why_per_gpu(shapes):
    small = machine(("GPU A", 4, 3.5, 300), ("GPU B", 4, 3.5, 300), ram=16)
    plan = optimise(shapes["70b"], small, n_ctx=4096)
    assert plan.fit == "no_fit"
    assert any("on GPU0 (GPU A)" in r for r in plan.reasons) and any("on GPU1 (GPU B)" in r for r in plan.reasons)


def test_profiles_describe_every_gpu():
    two = profile("2x-rtx3090-24g")
    assert gpu_summary(two.gpus) == "2 × NVIDIA GeForce RTX 3090"
    assert [g.index for g in two.gpus] == [0, 1] and two.gpus[1].pcie_width == 8
    mixed = profile("rtx3060-12g-rtx4070-12g")
    assert gpu_summary(mixed.gpus) == "NVIDIA GeForce RTX 3060 + NVIDIA GeForce RTX 4070"
    assert mixed.gpus[0].bandwidth_bytes_per_s < mixed.gpus[1].bandwidth_bytes_per_s


def test_fake_nvml_probe_of_two_gpus_feeds_the_planner(monkeypatch, shapes):
    nvml = FakeNvml([gpu(name="NVIDIA H200", used_mib=600, total_mib=143771, mem=3201, bus_bits=6144,
                         pcie_gen=5, pcie_width=16),
                     gpu(name="NVIDIA H200", used_mib=100_000, total_mib=143771, mem=3201, bus_bits=6144,
                         pcie_gen=4, pcie_width=8, compute=[(4242, 99_000 * MIB)])])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    found, notes = hardware_service.probe_gpus()
    assert notes == () and len(found) == 2
    assert found[1].free_bytes == (143771 - 100_000) * MIB
    assert (found[0].pcie_gen, found[0].pcie_width, found[1].pcie_gen, found[1].pcie_width) == (5, 16, 4, 8)
    assert found[0].bandwidth_bytes_per_s == pytest.approx(4.92e12, rel=0.01)
    hw = Hardware(gpus=found, ram_total_bytes=256 * GIB, ram_available_bytes=200 * GIB, cpu_physical_cores=16,
                  ram_bandwidth_bytes_per_s=100e9, llama_gpu_offload=True)
    plan = optimise(shapes["70b"], hw, n_ctx=131072)
    assert plan.fit == "full_gpu" and _within_budget(plan)
    by = _layers(plan)
    assert by[0] > by.get(1, 0)  # GPU1 is mostly held by another process: it takes fewer layers


def test_all_gpus_full_runs_on_the_cpu_with_them_hidden_and_says_so_for_each(shapes):
    from core.plan import cpu_fallback_warning

    full = machine(("GPU A", 8, 0.3, 300), ("GPU B", 8, 0.2, 300), ram=64)
    plan = optimise(shapes["8b"], full, n_ctx=4096)
    assert plan.fit == "cpu_only" and plan.extra.get("hide_gpus") and not plan.devices
    warning = cpu_fallback_warning(plan, full)
    assert "GPU A has 0.3 of 8.0 GiB free" in warning and "GPU B (GPU1) has 0.2 of 8.0 GiB free" in warning


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("moe") / "moe.gguf", "qwen3moe-30b-a3b", "Q4_K_M", None, sparse=True)
    return shape_from_headers([read_header(path)], name="moe")


def test_moe_experts_across_gpus_and_in_ram(moe):
    small = machine(("A", 8, 7.5, 448), ("B", 8, 7.5, 448))
    plan = evaluate(moe, small, -1, 8192, gpu_split=SplitChoice("layer", (1.0, 1.0)), n_cpu_moe=20)
    in_ram = sum(moe.block_expert_bytes(i) for i in range(20))
    full = evaluate(moe, small, -1, 8192, gpu_split=SplitChoice("layer", (1.0, 1.0)))
    # exactly the experts of blocks 0..19 leave the GPUs (they are all on GPU0 here) and go to RAM
    assert full.devices[0].memory.weights - plan.devices[0].memory.weights == in_ram
    assert plan.devices[1].memory.weights == full.devices[1].memory.weights
    assert plan.cpu.weights - full.cpu.weights == in_ram and plan.n_cpu_moe == 20
    # no pipeline-parallel copies with experts overridden to RAM: less compute on each GPU
    assert plan.devices[1].memory.compute < full.devices[1].memory.compute
    assert plan.tokens_per_s < full.tokens_per_s


def test_moe_optimiser_picks_expert_offload_over_two_small_gpus_when_faster(moe):
    small = machine(("A", 8, 7.5, 448), ("B", 8, 7.5, 448))
    plan = optimise(moe, small, n_ctx=8192)
    assert plan.n_gpu_layers == moe.n_layer + 1 and 0 < plan.n_cpu_moe < moe.n_layer and _within_budget(plan)
    assert any("expert offload" in r and "faster than the best layer offload" in r for r in plan.reasons)
    roomy = optimise(moe, EQUAL_2, n_ctx=8192)
    assert roomy.fit == "full_gpu" and roomy.n_cpu_moe == 0 and len([d for d in roomy.devices if d.n_layers]) == 2
