"""Cluster planning (core.cluster_plan) against published vLLM figures, and its CLI.

Reference points (sources in docs/ARCHITECTURE.md, "Cluster planning"):
  A. vLLM PR 13596 (its own log): 127,626 GPU blocks -> "GPU KV cache size: 2,042,016 tokens",
     "Maximum concurrency for 2,048 tokens per request: 997.08x".
  B. vLLM PR 12569 (its own log): neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8 on one GPU,
     --max-model-len 2048 --gpu-memory-utilization 0.98: "Loading model weights took 67.7229 GB",
     "# GPU blocks: 1381", "Maximum concurrency for 2048 tokens per request: 10.79x".
  C. vLLM issue 21348: Qwen3-235B-A22B-FP8, --tensor-parallel-size 4 on 4 x H100:
     "Available KV cache memory: 8.11 GiB", "GPU KV cache size: 178,880 tokens".
  D. vLLM docs, Distributed Inference and Serving: 16 GPUs in 2 nodes of 8 -> tensor parallel 8,
     pipeline parallel 2.
"""
from __future__ import annotations

import json

import pytest

from core.cluster_plan import (BLOCK_SIZE, GIB, ClusterProfile, candidate_sizes, gpu_blocks, kv_heads_per_gpu,
                               max_concurrency, model_from_config, page_bytes, plan_llama_server, plan_vllm,
                               vllm_layout)
from tests.conftest import ROOT

LLAMA_70B = {"model_type": "llama", "hidden_size": 8192, "num_attention_heads": 64, "num_key_value_heads": 8,
             "num_hidden_layers": 80, "intermediate_size": 28672, "vocab_size": 128256,
             "max_position_embeddings": 131072, "tie_word_embeddings": False}
QWEN3_235B = {"model_type": "qwen3_moe", "hidden_size": 4096, "num_attention_heads": 64, "num_key_value_heads": 4,
              "head_dim": 128, "num_hidden_layers": 94, "intermediate_size": 12288, "moe_intermediate_size": 1536,
              "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "max_position_embeddings": 40960}
H100 = dict(gpu_name="NVIDIA H100 80GB HBM3", vram_gib=79.19, bandwidth_gb_s=3350, intra_node_gb_s=450)


def cluster(nodes=1, gpus=1, **extra) -> ClusterProfile:
    return ClusterProfile(name=f"{nodes}x{gpus}", nodes=nodes, gpus_per_node=gpus, **{**H100, **extra})


def test_a_tokens_and_concurrency_from_blocks():
    assert 127626 * BLOCK_SIZE == 2_042_016
    assert round(max_concurrency(127626, 2048), 2) == 997.08
    assert round(max_concurrency(1381, 2048), 2) == 10.79  # B's log line


def test_b_llama70b_w8a8_weights_and_blocks_on_one_gpu():
    model = model_from_config(LLAMA_70B, "llama-70b-w8a8", "int8")
    assert model.total_bytes / GIB == pytest.approx(67.7229, rel=0.005)
    # A 70B layer keeps 8 KV heads of 128: one 16-token block of one layer is 64 KiB in bf16.
    assert page_bytes(model.dims, tp=1) == 16 * 8 * 2 * 128 * 2 == 65536
    layout = vllm_layout(model, cluster(), tp=1, pp=1, max_model_len=2048, utilization=0.98)
    assert layout.fits and layout.weights_per_gpu == model.total_bytes
    # The runtime reserve is the estimate here; vLLM measured it. Within 5 % of the logged 1381.
    assert layout.blocks == pytest.approx(1381, rel=0.05)
    assert layout.concurrency == pytest.approx(10.79, rel=0.05)


def test_c_qwen3_235b_tp4_tokens_from_the_logged_kv_memory():
    model = model_from_config(QWEN3_235B, "Qwen3-235B-A22B-FP8", "fp8")
    assert model.experts == 128 and model.total_bytes / 1e9 == pytest.approx(235e9 * 1.0 / 1e9, rel=0.03)
    assert kv_heads_per_gpu(4, 4) == 1
    blocks = gpu_blocks(int(8.11 * GIB), page_bytes(model.dims, tp=4), layers_on_gpu=94)
    assert blocks * BLOCK_SIZE == pytest.approx(178_880, rel=0.015)  # "8.11 GiB" is rounded in the log


def test_d_the_whole_cluster_follows_vllms_rule_tp_per_node_pp_per_node_count():
    model = model_from_config(LLAMA_70B, "meta-llama/Llama-3.1-70B-Instruct")
    plan = plan_vllm(model, cluster(nodes=2, gpus=8, inter_node_gb_s=50), 32768, goal="most_users",
                     repo="meta-llama/Llama-3.1-70B-Instruct")
    assert (plan.chosen.tp, plan.chosen.pp) == (8, 2)
    assert plan.command.startswith("vllm serve meta-llama/Llama-3.1-70B-Instruct")
    for flag in ("--tensor-parallel-size 8", "--pipeline-parallel-size 2", "--max-model-len 32768",
                 "--gpu-memory-utilization 0.9", "--distributed-executor-backend ray"):
        assert flag in plan.command
    assert any("Ray cluster" in note for note in plan.notes)


def test_fewest_gpus_that_hold_the_model_and_one_full_sequence():
    model = model_from_config(LLAMA_70B, "llama-70b")  # bf16: 131 GiB of weights
    plan = plan_vllm(model, cluster(nodes=2, gpus=8), 32768)
    assert (plan.chosen.tp, plan.chosen.pp) == (4, 1)
    two = next(c for c in plan.candidates if (c.tp, c.pp) == (2, 1))
    assert not two.fits and "less than one 32,768-token sequence" in two.reasons[0]
    # More GPUs: less weight each, more KV each, more sequences at once.
    eight = next(c for c in plan.candidates if (c.tp, c.pp) == (8, 1))
    assert eight.weights_per_gpu < plan.chosen.weights_per_gpu and eight.concurrency > plan.chosen.concurrency
    # An fp8 KV cache holds twice the tokens in the same memory.
    fp8 = plan_vllm(model, cluster(nodes=2, gpus=8), 32768, kv_dtype="fp8")
    assert fp8.chosen.kv_tokens == pytest.approx(2 * plan.chosen.kv_tokens, rel=0.01)
    assert "--kv-cache-dtype fp8" in fp8.command


def test_tp_must_divide_the_heads_and_kv_heads_are_replicated_beyond_them():
    odd = model_from_config({**LLAMA_70B, "num_attention_heads": 40, "num_key_value_heads": 8}, "odd")
    assert all(40 % tp == 0 for tp, _ in candidate_sizes(odd, cluster(gpus=8)))
    assert (16, 1) not in candidate_sizes(odd, cluster(nodes=2, gpus=8))
    assert kv_heads_per_gpu(8, 16) == 1 and kv_heads_per_gpu(8, 4) == 2
    assert vllm_layout(odd, cluster(gpus=8), tp=16, pp=1, max_model_len=4096).reasons[0].startswith("40 attention")


def test_nothing_fits_says_what_would():
    model = model_from_config(LLAMA_70B, "llama-70b")
    plan = plan_vllm(model, cluster(gpus=1), 8192)
    assert plan.chosen is None and plan.command == "" and "quantised checkpoint" in plan.notes[0]
    pcie = ClusterProfile(name="4090s", nodes=1, gpus_per_node=2, gpu_name="4090", vram_gib=24, bandwidth_gb_s=1008,
                          intra_node="pcie", intra_node_gb_s=25)
    small = model_from_config({**LLAMA_70B, "num_hidden_layers": 8}, "small")
    tight = plan_vllm(small, pcie, 1_000_000)
    assert tight.chosen is None and "try --max-model-len" in tight.notes[0]


def test_pcie_box_may_pipeline_inside_the_node():
    box = ClusterProfile(name="4090s", nodes=1, gpus_per_node=4, gpu_name="4090", vram_gib=24, bandwidth_gb_s=1008,
                         intra_node="pcie", intra_node_gb_s=25)
    model = model_from_config(LLAMA_70B, "llama")
    assert (1, 4) in candidate_sizes(model, box) and (2, 2) in candidate_sizes(model, box)
    nvlink = cluster(gpus=4)
    assert (1, 4) not in candidate_sizes(model, nvlink)


def test_llama_server_shares_the_kv_cache_among_parallel_slots():
    model = model_from_config(LLAMA_70B, "llama")
    box = cluster(gpus=4)
    a = plan_llama_server(model, box, "Q4_K_M", ctx_per_slot=8192)
    b = plan_llama_server(model, box, "Q4_K_M", ctx_per_slot=16384)
    assert a.fits and a.parallel > 1 and b.parallel in (a.parallel // 2, a.parallel // 2 - 1)
    assert a.weights_bytes / 1e9 == pytest.approx(70.55 * 4.85 / 8, rel=0.03)
    # 80 layers x 8 KV heads x 128 x 2 (K, V) x q8_0's 34/32 bytes per value
    assert a.kv_bytes_per_token == int(80 * 8 * 128 * 2 * 34 / 32)
    assert a.parallel == a.kv_budget_bytes // (a.kv_bytes_per_token * 8192)
    assert f"-c {a.parallel * 8192} --parallel {a.parallel}" in a.command
    one = plan_llama_server(model, cluster(gpus=1, vram_gib=24), "Q8_0")
    assert not one.fits and one.command == "" and "do not fit" in one.reasons[0]


def test_cli_prints_a_plan_for_a_profile_and_a_local_config(tmp_path, capsys):
    from cli.main import main

    folder = tmp_path / "Llama-3.1-70B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_70B))
    assert main(["plan", "--cluster", "h100-2x8", str(folder), "--ctx", "32768", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["vllm"]["chosen"]["tp"], out["vllm"]["chosen"]["pp"]) == (4, 1)
    assert out["llama_server"]["parallel"] > 0
    assert main(["plan", "--cluster", "h100-1x8", str(folder / "config.json")]) == 0
    assert "vllm serve Llama-3.1-70B-Instruct" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "nope", "x/y"], "no cluster profile 'nope'"),
    (["--cluster", "h100-1x8", "MISSING/config.json"], "No such file"),
    (["--cluster", "h100-1x8", "cfg", "--ctx", "5"], "--ctx must be"),
    (["--cluster", "h100-1x8", "cfg", "--gpu-memory-utilization", "3"], "--gpu-memory-utilization"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    from cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(LLAMA_70B))
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_profiles_are_strict(tmp_path):
    from services.cluster_models import ClusterInputError, cluster_names, load_cluster

    assert {"h100-1x8", "h100-2x8", "rtx4090-1x4", "a100-4x4-40g"} <= set(cluster_names())
    for name in cluster_names():
        assert load_cluster(name).total_gpus >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "profiles/clusters/h100-1x8.yaml").read_text() + "shell: rm -rf /\n")
    with pytest.raises(ClusterInputError, match="shell"):
        load_cluster(str(bad))
    bad.write_text("nodes: -1\n")
    with pytest.raises(ClusterInputError, match="nodes"):
        load_cluster(str(bad))
