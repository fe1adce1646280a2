"""The transformers memory estimator (core/hf_memory.py): table-driven on known shapes, and checked
against what a real NF4 / int8 / bf16 load of the test checkpoint holds."""
from __future__ import annotations

import json
import math

import pytest

from core.hf_memory import (GIB, MIB, HfMemorySettings, RuntimeOverhead, estimate_memory, group_memory,
                            kv_cache_bytes, max_memory_for_budget, nf4_constant_bytes)
from core.hf_model_shape import (ConfigError, ModelDims, TensorInfo, dims_from_config, matches_module,
                                 quantized_by_bnb, tensors_from_dims)

LLAMA2_7B = ModelDims("llama", n_layer=32, hidden_size=4096, n_head=32, n_kv_head=32, head_dim=128,
                      intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
LLAMA31_8B = ModelDims("llama", 32, 4096, 32, 8, 128, 14336, 128256, 131072)
LINEAR_7B = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)   # quantised weights
EMBED_7B = 32000 * 4096                                  # embeddings; the head is as large
NORMS_7B = (2 * 32 + 1) * 4096


def settings(**kw) -> HfMemorySettings:
    return HfMemorySettings(**{"n_ctx": 4096, **kw})


@pytest.mark.parametrize("quant,double_quant,expected_weights", [
    # NF4 packs two weights a byte; int8 one; embeddings, head and norms stay at 2 bytes
    ("nf4", True, LINEAR_7B // 2 + (2 * EMBED_7B + NORMS_7B) * 2),
    ("int8", False, LINEAR_7B + (2 * EMBED_7B + NORMS_7B) * 2),
    ("bf16", False, (LINEAR_7B + 2 * EMBED_7B + NORMS_7B) * 2),
    ("fp16", False, (LINEAR_7B + 2 * EMBED_7B + NORMS_7B) * 2),
])
def test_llama2_7b_footprint_by_quantisation(quant, double_quant, expected_weights):
    est = estimate_memory(LLAMA2_7B, tensors_from_dims(LLAMA2_7B), settings(quantization=quant, double_quant=double_quant))
    # get_memory_footprint: parameters + the two rotary buffers; never the quantisation constants
    assert est.footprint_bytes == expected_weights + 128 * 4
    assert est.fully_on_gpu and est.gpu_blocks == 32


def test_nf4_7b_matches_the_measured_3_6_gib_and_double_quant_saves_constants():
    tensors = tensors_from_dims(LLAMA2_7B)
    dq = estimate_memory(LLAMA2_7B, tensors, settings(quantization="nf4", double_quant=True))
    plain = estimate_memory(LLAMA2_7B, tensors, settings(quantization="nf4", double_quant=False))
    # measured on an H200: 3.6 GB for Llama-2-7B NF4 with double quantisation (measured-facts.md)
    assert 3.55 * GIB < dq.gpu.weights < 3.65 * GIB
    # fp32 absmax per 64 weights = 0.5 bit/weight; double quant: 8 bits + 32/256 per block ≈ 0.127 bit
    saved = plain.quant_constant_bytes - dq.quant_constant_bytes
    assert saved == pytest.approx(LINEAR_7B * (0.5 - 0.127) / 8, rel=0.01)


def test_nf4_constants_per_tensor():
    n = 4096 * 11008
    blocks = n // 64
    assert nf4_constant_bytes(n, double_quant=False) == 4 * blocks + 64
    assert nf4_constant_bytes(n, double_quant=True) == blocks + 4 * math.ceil(blocks / 256) + 1024 + 64 + 4


def test_nf4_cpu_layout_keeps_a_bf16_absmax_per_block():
    n = 576 * 1536
    assert nf4_constant_bytes(n, double_quant=True, cpu_layout=True) == 2 * n // 64 + 64 + 4


def test_head_and_embeddings_stay_unquantised_and_skip_modules_add_to_them():
    tensors = tensors_from_dims(LLAMA2_7B)
    skip = ("lm_head",)
    assert not quantized_by_bnb(TensorInfo("lm_head.weight", (32000, 4096)), skip)
    assert not quantized_by_bnb(TensorInfo("model.embed_tokens.weight", (32000, 4096)), skip)
    assert not quantized_by_bnb(TensorInfo("model.layers.0.input_layernorm.weight", (4096,)), skip)
    assert quantized_by_bnb(TensorInfo("model.layers.0.mlp.down_proj.weight", (4096, 11008)), skip)
    base = estimate_memory(LLAMA2_7B, tensors, settings())
    kept = estimate_memory(LLAMA2_7B, tensors, settings(skip_modules=("mlp.down_proj",)))
    down = 32 * 4096 * 11008
    assert kept.footprint_bytes - base.footprint_bytes == down * 2 - down // 2


@pytest.mark.parametrize("module,patterns,expected", [
    ("model.layers.1.mlp", ["model.layers.1"], True),
    ("model.layers.11.mlp", ["model.layers.1"], False),
    ("model.layers.11.mlp.down_proj", ["down_proj"], True),
    ("model.layers.3.mlp.gate_proj", ["mlp.gate"], False),
    ("model.layers.3.self_attn.q_proj", ["model.layers.*"], True),
])
def test_skip_patterns_follow_transformers(module, patterns, expected):
    assert matches_module(module, patterns) is expected


def test_kv_cache_formula_and_gqa():
    assert kv_cache_bytes(LLAMA2_7B, 4096) == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * GIB
    assert kv_cache_bytes(LLAMA31_8B, 8192) == 2 * 32 * 8 * 128 * 8192 * 2 == GIB


def test_budget_offloads_blocks_unquantised_at_the_offload_dtype():
    tensors = tensors_from_dims(LLAMA2_7B)
    est = estimate_memory(LLAMA2_7B, tensors, settings(offload_dtype="fp32", n_ctx=1024), gpu_budget_bytes=3 * GIB)
    assert 0 < est.gpu_blocks < 32 and not est.fully_on_gpu and not est.cpu_only
    assert est.gpu.total <= 3 * GIB and est.fits
    block_params = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    offloaded = 32 - est.gpu_blocks
    # fp32 on the CPU: 4 bytes a weight, 8x the NF4 size of the same block
    assert est.cpu.weights == offloaded * block_params * 4
    # the GPU keeps room to stream the largest offloaded block in (compute dtype)
    no_offload = estimate_memory(LLAMA2_7B, tensors, settings(n_ctx=1024))
    assert est.gpu.compute - no_offload.gpu.compute == block_params * 2
    assert [k for k, v in est.device_map.items() if v == "cpu"] == [f"model.layers.{i}" for i in range(est.gpu_blocks, 32)]
    assert est.device_map["lm_head"] == 0 and est.device_map["model.embed_tokens"] == 0


@pytest.mark.parametrize("budget_gib", [2.5, 3, 4, 5, 6, 8])
def test_more_budget_never_puts_fewer_blocks_on_the_gpu(budget_gib):
    tensors = tensors_from_dims(LLAMA2_7B)
    smaller = estimate_memory(LLAMA2_7B, tensors, settings(), gpu_budget_bytes=int((budget_gib - 0.5) * GIB))
    larger = estimate_memory(LLAMA2_7B, tensors, settings(), gpu_budget_bytes=int(budget_gib * GIB))
    assert larger.gpu_blocks >= smaller.gpu_blocks
    assert larger.gpu.total <= budget_gib * GIB or larger.cpu_only


def test_zero_or_tiny_budget_runs_on_the_cpu_quantised():
    tensors = tensors_from_dims(LLAMA2_7B)
    for budget in (0, 200 * MIB):
        est = estimate_memory(LLAMA2_7B, tensors, settings(), gpu_budget_bytes=budget)
        assert est.cpu_only and est.gpu.total == 0
        assert est.cpu.weights == pytest.approx(3.6 * GIB, rel=0.02)  # NF4 on the CPU stays NF4


def test_static_cache_counts_the_whole_context():
    tensors = tensors_from_dims(LLAMA2_7B)
    dynamic = estimate_memory(LLAMA2_7B, tensors, settings(), kv_tokens=100)
    static = estimate_memory(LLAMA2_7B, tensors, settings(static_cache=True), kv_tokens=100)
    assert dynamic.gpu.kv_cache == kv_cache_bytes(LLAMA2_7B, 100)
    assert static.gpu.kv_cache == 2 * GIB


def test_overhead_is_counted_once_on_each_side():
    tensors = tensors_from_dims(LLAMA2_7B)
    est = estimate_memory(LLAMA2_7B, tensors, settings(), overhead=RuntimeOverhead(123, 456))
    assert est.gpu.overhead == 123 and est.cpu.overhead == 456


def test_max_memory_for_budget():
    assert max_memory_for_budget(10 * GIB, 32 * GIB) == {0: 10 * GIB, "cpu": 32 * GIB}
    assert max_memory_for_budget(GIB, 0, gpu_index=1) == {1: GIB, "cpu": 0}
    with pytest.raises(ValueError):
        max_memory_for_budget(-1, 0)


def test_dims_from_config_variants():
    base = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
            "vocab_size": 100, "intermediate_size": 128}
    d = dims_from_config(base)
    assert (d.n_kv_head, d.head_dim, d.max_position_embeddings, d.tie_word_embeddings) == (4, 16, 2048, False)
    nested = dims_from_config({"model_type": "gemma3", "text_config": {**base, "head_dim": 32}})
    assert nested.head_dim == 32 and nested.model_type == "gemma3"
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        dims_from_config({k: v for k, v in base.items() if k != "num_hidden_layers"})
    with pytest.raises(ConfigError, match="vocab_size"):
        dims_from_config({**base, "vocab_size": -3})


def test_groups_follow_placement_order():
    groups = group_memory(tensors_from_dims(LLAMA2_7B), settings())
    names = [g.name for g in groups]
    assert names[0] == "model.embed_tokens" and names[1:33] == [f"model.layers.{i}" for i in range(32)]
    assert set(names[33:]) == {"model.norm", "lm_head"}


@pytest.fixture(scope="module")
def checkpoint_repo(hf_checkpoint):
    from services.hf_repo import inspect_repo

    return inspect_repo(hf_checkpoint)


def test_tensor_table_from_config_matches_the_real_checkpoint(checkpoint_repo):
    # planning from config.json alone (before download) gives the same tensors as the file headers
    from_config = {(t.name, t.shape) for t in tensors_from_dims(checkpoint_repo.dims)}
    assert from_config == {(t.name, t.shape) for t in checkpoint_repo.tensors}
    config = json.loads((checkpoint_repo.path / "config.json").read_text())
    assert checkpoint_repo.dims == dims_from_config(config)


@pytest.mark.real_model
@pytest.mark.parametrize("quantization", ["nf4", "int8", "bf16"])
def test_prediction_matches_a_real_cpu_load(hf_checkpoint, checkpoint_repo, quantization):
    """Load in the worker (CPU), read what it really holds (parameters, buffers and quantisation
    constants, each storage once), compare with the prediction: within 1%."""
    from backends.base import LoadSpec
    from backends.worker_client import WorkerBackend
    from core.options import TransformersLoadOptions

    backend = WorkerBackend("transformers")
    try:
        info = backend.load(LoadSpec(str(hf_checkpoint), TransformersLoadOptions(quantization=quantization, n_ctx=1024),
                                     backend="transformers"))
    finally:
        backend.unload()
    measured = sum(b.mib for b in info.buffers if b.kind == "model") * MIB
    est = estimate_memory(checkpoint_repo.dims, checkpoint_repo.tensors,
                          HfMemorySettings(quantization, "bf16", n_ctx=1024), gpu_budget_bytes=0)
    assert est.cpu_only and info.n_gpu_layers == 0
    assert measured == pytest.approx(est.cpu.weights, rel=0.01)
