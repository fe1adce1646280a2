"""Table-driven planner tests with described machines (fake GPUs are plain data here: the planner
is pure) and real GGUF headers of synthetic models (sparse files: shapes without weights)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from core.hardware import GIB, GpuInfo, Hardware
from core.hardware_profile import parse_profile
from core.model_shape import shape_from_headers
from core.planner import Calibration, evaluate, evaluate_gpu_hidden, optimise, pad_ctx
from services.gguf_file import read_header
from services.yaml_files import load_data_file
from tools.synth_gguf import write

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    out = {}
    for name, shape, layers in (("8b", "llama31-8b", None), ("70b", "llama31-70b", None),
                                ("7b", "llama2-7b", None), ("13b", "llama2-13b", None)):
        path = write(folder / f"{name}.gguf", shape, "Q4_K_M", layers, sparse=True)
        out[name] = shape_from_headers([read_header(path)], name=name)
    return out


def profile(name: str) -> Hardware:
    return parse_profile(load_data_file(ROOT / "profiles" / f"{name}.yaml"), name).to_hardware(name)


def gpu_machine(vram_gib: float, ram_gib: float = 64, bandwidth: float = 360e9, offload: bool = True) -> Hardware:
    gpu = GpuInfo(0, f"GPU {vram_gib} GiB", int(vram_gib * GIB), int(vram_gib * GIB), bandwidth_bytes_per_s=bandwidth)
    return Hardware(gpus=(gpu,), ram_total_bytes=int(ram_gib * GIB), ram_available_bytes=int(ram_gib * GIB),
                    cpu_physical_cores=8, ram_bandwidth_bytes_per_s=40e9, llama_gpu_offload=offload)


CPU_ONLY = Hardware(gpus=(), ram_total_bytes=16 * GIB, ram_available_bytes=12 * GIB, cpu_physical_cores=4,
                    ram_bandwidth_bytes_per_s=30e9)


@pytest.mark.parametrize("model,machine,ctx,fit,ngl_range", [
    ("8b", "rtx3060-12g", 8192, "full_gpu", (33, 33)),
    ("8b", "rtx4090-24g", 32768, "full_gpu", (33, 33)),
    ("8b", "rtx3060ti-8g", 8192, "full_gpu", (33, 33)),
    ("13b", "rtx3060ti-8g", 4096, "partial", (20, 40)),
    ("70b", "rtx3060-12g", 8192, "partial", (14, 24)),
    ("70b", "rtx4090-24g", 8192, "partial", (35, 50)),
    ("8b", "cpu-16g", 4096, "cpu_only", (0, 0)),
    ("70b", "cpu-16g", 4096, "no_fit", (0, 81)),
])
def test_scenarios(shapes, model, machine, ctx, fit, ngl_range):
    hw = profile(machine)
    plan = optimise(shapes[model], hw, n_ctx=ctx)
    assert plan.fit == fit, plan.reasons
    if fit != "no_fit":
        assert ngl_range[0] <= plan.n_gpu_layers <= ngl_range[1]
        assert plan.vram_bytes <= (hw.gpus[0].free_bytes - Calibration().vram_margin_bytes if hw.gpus else 0)
        assert plan.ram_bytes <= hw.ram_available_bytes - Calibration().ram_margin_bytes
        assert plan.n_ctx == ctx and plan.tokens_per_s > 0
    assert plan.reasons


def test_seed_case_70b_on_a_3060(shapes):
    """The card's example: 70B Q4_K_M split between 12 GB of VRAM and system RAM."""
    plan = optimise(shapes["70b"], profile("rtx3060-12g"), n_ctx=8192)
    assert plan.fit == "partial"
    assert 25 * GIB < plan.ram_bytes < 40 * GIB
    assert 9 * GIB < plan.vram_bytes <= 11.4 * GIB
    assert 0.3 < plan.tokens_per_s < 5


def test_n_gpu_layers_semantics(shapes):
    shape = shapes["8b"]
    hw = gpu_machine(80)
    zero, one, two, full = (evaluate(shape, hw, n, 4096) for n in (0, 1, 2, 33))
    assert zero.gpu.weights == 0 and zero.fit == "cpu_only"
    assert one.gpu.weights == shape.output_bytes                      # the head alone
    assert two.gpu.weights == shape.output_bytes + shape.block_bytes[-1]  # the head + the last block
    assert full.gpu.weights == shape.output_bytes + sum(shape.block_bytes)
    assert full.cpu.weights == shape.token_embd_bytes + shape.other_bytes  # input embedding stays on the host
    assert evaluate(shape, hw, -1, 4096).n_gpu_layers == 33 == evaluate(shape, hw, 500, 4096).n_gpu_layers


def test_kv_cache_formula(shapes):
    shape = shapes["8b"]  # 32 layers x 8 KV heads x 128 dims, K and V
    plan = evaluate(shape, gpu_machine(80), 33, 4000, "f16")
    assert pad_ctx(4000) == 4096
    assert plan.gpu.kv_cache == 4096 * 32 * 8 * 128 * 2 * 2
    q8 = evaluate(shape, gpu_machine(80), 33, 4096, "q8_0")
    q4 = evaluate(shape, gpu_machine(80), 33, 4096, "q4_0")
    assert q8.gpu.kv_cache == plan.gpu.kv_cache * 34 // 64
    assert q4.gpu.kv_cache == plan.gpu.kv_cache * 18 // 64


def test_tied_embeddings_keep_a_copy_on_the_gpu(embedded_model):
    shape = shape_from_headers([read_header(embedded_model)])
    assert shape.output_tied
    full = evaluate(shape, gpu_machine(8), 31, 2048)
    assert full.gpu.weights == sum(shape.block_bytes) + shape.output_bytes
    assert full.cpu.weights == shape.token_embd_bytes
    cpu = evaluate(shape, CPU_ONLY, 0, 2048)
    assert cpu.cpu.weights == shape.weight_bytes == embedded_model.stat().st_size - read_header(embedded_model).data_offset


def test_more_vram_never_means_fewer_layers(shapes):
    previous = -1
    for gib in (2, 4, 6, 8, 10, 12, 16, 24, 32, 48):
        plan = optimise(shapes["70b"], gpu_machine(gib, ram_gib=128), n_ctx=4096)
        assert plan.n_gpu_layers >= previous
        previous = plan.n_gpu_layers


def test_context_goal_never_exceeds_training_and_keeps_speed(shapes):
    for model in ("7b", "8b"):
        shape = shapes[model]
        fast = optimise(shape, gpu_machine(24), goal="fastest")
        long = optimise(shape, gpu_machine(24), goal="context")
        assert long.n_ctx <= shape.n_ctx_train
        assert long.n_ctx >= fast.n_ctx
        assert long.tokens_per_s >= 0.8 * fast.tokens_per_s
    assert optimise(shapes["7b"], gpu_machine(24), goal="context").n_ctx == 4096  # trained for 4096


def test_context_beyond_training_is_refused(shapes):
    plan = evaluate(shapes["7b"], gpu_machine(24), 33, 8192)
    assert plan.fit == "no_fit" and any("trained" in r for r in plan.reasons)
    capped = optimise(shapes["7b"], gpu_machine(24), n_ctx=8192)
    assert capped.n_ctx == 4096 and any("capped" in r for r in capped.reasons)


def test_quantised_kv_needs_flash_attention(shapes):
    plan = evaluate(shapes["8b"], gpu_machine(24), 33, 4096, "q8_0", flash_attn=False)
    assert plan.fit == "no_fit" and any("flash attention" in r for r in plan.reasons)
    assert optimise(shapes["8b"], gpu_machine(24), flash_attn=False).kv_type == "f16"


def test_quantised_kv_only_when_it_buys_layers(shapes):
    roomy = optimise(shapes["8b"], gpu_machine(24), n_ctx=8192)
    assert roomy.kv_type == "f16"
    tight = optimise(shapes["8b"], gpu_machine(8), n_ctx=65536)
    assert tight.kv_type != "f16" and tight.fit == "full_gpu"


def test_build_without_offload_plans_cpu_only(shapes):
    plan = optimise(shapes["8b"], gpu_machine(24, offload=False))
    assert plan.fit == "cpu_only" and plan.vram_bytes == 0
    forced = evaluate(shapes["8b"], gpu_machine(24, offload=False), 33, 4096)
    assert forced.n_gpu_layers == 0 and any("no GPU offload" in r for r in forced.reasons)


def test_gpu_build_uses_vram_even_with_zero_layers(shapes):
    plan = evaluate(shapes["8b"], gpu_machine(24), 0, 4096)
    assert plan.fit == "cpu_only"
    assert plan.gpu.overhead > 0 and plan.gpu.compute >= shapes["8b"].output_bytes


@pytest.mark.parametrize("free_gib, hidden", [(0.05, True), (0.8, True), (2.5, False), (12, False)])
def test_a_gpu_too_full_for_cuda_buffers_runs_the_model_with_the_gpu_hidden(shapes, free_gib, hidden):
    full = replace(gpu_machine(12), gpus=(replace(gpu_machine(12).gpus[0], free_bytes=int(free_gib * GIB)),))
    plan = optimise(shapes["8b"], full, n_ctx=4096)
    assert plan.fit != "no_fit" and plan.extra.get("hide_gpus", False) is hidden
    if hidden:
        assert plan.fit == "cpu_only" and plan.vram_bytes == 0 and plan.n_gpu_layers == 0
        assert replace(plan, goal="") == evaluate_gpu_hidden(shapes["8b"], full, 4096)
    # Hidden or not, the RAM must fit: a 70B on 16 GiB of RAM does not, GPU or no GPU.
    assert optimise(shapes["70b"], replace(full, ram_available_bytes=16 * GIB)).fit == "no_fit"


def test_nothing_fits_says_why(shapes):
    plan = optimise(shapes["70b"], replace(CPU_ONLY, ram_available_bytes=8 * GIB))
    assert plan.fit == "no_fit"
    assert any("RAM" in r for r in plan.reasons)


def test_calibrated_overhead_is_used(shapes):
    base = evaluate(shapes["8b"], gpu_machine(24), 33, 4096)
    bigger = evaluate(shapes["8b"], gpu_machine(24), 33, 4096, cal=Calibration(gpu_overhead_bytes=900 * MIB))
    assert bigger.vram_bytes - base.vram_bytes == (900 - 598) * MIB


@settings(max_examples=60, deadline=None)
@given(vram=st.floats(1, 80), ram=st.floats(2, 256), ctx=st.sampled_from([2048, 4096, 8192, 32768]),
       model=st.sampled_from(["7b", "8b", "70b"]))
def test_plans_never_exceed_the_budget(shapes, vram, ram, ctx, model):
    hw = gpu_machine(vram, ram_gib=ram)
    plan = optimise(shapes[model], hw, n_ctx=ctx)
    cal = Calibration()
    if plan.fit != "no_fit":
        assert plan.vram_bytes <= hw.gpus[0].free_bytes - cal.vram_margin_bytes
        assert plan.ram_bytes <= hw.ram_available_bytes - cal.ram_margin_bytes
        assert plan.n_ctx <= max(shapes[model].n_ctx_train, 0) or shapes[model].n_ctx_train == 0
