"""Model folders that must be refused before anything heavy is loaded (services/hf_repo.py), and
the decisions about what this machine can run (core/hf_support.py). No torch here."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from core.hf_model_shape import TensorInfo
from core.hf_support import (GPTQ_HINT, HfSupport, nf4_cpu_shape_problem, quantization_problem, resolve_attention,
                             resolve_compute_dtype)
from services.hf_repo import RepoError, inspect_repo, read_safetensors_header

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1,
          "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 16, "intermediate_size": 16}


def write_safetensors(path, tensors: dict[str, tuple[str, list[int]]], header_override=None) -> None:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = 2 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header_override if header_override is not None else header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def make_repo(root, config=CONFIG, weights=True):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if weights:
        write_safetensors(root / "model.safetensors", {"model.embed_tokens.weight": ("BF16", [16, 8]),
                                                       "model.layers.0.mlp.up_proj.weight": ("BF16", [16, 8])})
    return root


def test_a_valid_folder_is_read_without_weights(tmp_path):
    repo = inspect_repo(make_repo(tmp_path / "ok"), supported_model_types={"llama"})
    assert [t.name for t in repo.tensors] == ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"]
    assert repo.dims.n_layer == 1 and repo.quant_method == "" and not repo.chat_template_file


def test_pickle_only_weights_are_refused(tmp_path):
    root = make_repo(tmp_path / "pickle", weights=False)
    (root / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(RepoError, match="only pickle weights.*pytorch_model.bin.*safetensors"):
        inspect_repo(root)


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused(tmp_path, where):
    root = make_repo(tmp_path / "remote")
    auto_map = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    if where == "config.json":
        (root / "config.json").write_text(json.dumps({**CONFIG, "auto_map": auto_map}))
    else:
        (root / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    (root / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(RepoError, match=f"own Python code \\({where} has auto_map\\).*trust_remote_code=False"):
        inspect_repo(root)


def test_unsupported_architecture_is_refused(tmp_path):
    root = make_repo(tmp_path / "bert", {**CONFIG, "model_type": "bert", "architectures": ["BertModel"]})
    with pytest.raises(RepoError, match="Architecture bert \\(BertModel\\) is not supported"):
        inspect_repo(root, supported_model_types={"llama", "mistral"})


@pytest.mark.parametrize("case,message", [
    ("no_config", "no config.json"),
    ("not_a_folder", "not a folder"),
    ("no_weights", "no weights"),
    ("bad_json", "config.json cannot be read"),
    ("short_file", "too short"),
    ("huge_header", "corrupt header"),
    ("offset_outside", "corrupt entry"),
    ("size_mismatch", "does not match its size"),
    ("missing_shard", "1 of 2 weight shards are missing"),
    ("shard_traversal", "invalid shard"),
    ("config_without_layers", "num_hidden_layers"),
])
def test_broken_folders_get_a_plain_message(tmp_path, case, message):
    root = make_repo(tmp_path / case)
    weights = root / "model.safetensors"
    if case == "no_config":
        (root / "config.json").unlink()
    elif case == "not_a_folder":
        root = weights
    elif case == "no_weights":
        weights.unlink()
    elif case == "bad_json":
        (root / "config.json").write_text("{not json")
    elif case == "short_file":
        weights.write_bytes(b"abc")
    elif case == "huge_header":
        weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    elif case == "offset_outside":
        write_safetensors(weights, {}, {"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 1 << 30]}})
    elif case == "size_mismatch":
        write_safetensors(weights, {}, {"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 0]}})
    elif case in ("missing_shard", "shard_traversal"):
        shard = "../../etc/passwd" if case == "shard_traversal" else "model-00002-of-00002.safetensors"
        shutil.move(weights, root / "model-00001-of-00002.safetensors")
        (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": shard}}))
    elif case == "config_without_layers":
        (root / "config.json").write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "num_hidden_layers"}))
    with pytest.raises(RepoError, match=message):
        inspect_repo(root)


def test_header_reader_reads_the_real_checkpoint(hf_checkpoint):
    tensors = read_safetensors_header(hf_checkpoint / "model.safetensors")
    assert len(tensors) == 272 and {t.dtype for t in tensors} == {"BF16"}
    repo = inspect_repo(hf_checkpoint)
    assert repo.chat_template_file and repo.weight_bytes == (hf_checkpoint / "model.safetensors").stat().st_size


GPU_AMPERE = HfSupport(cuda=True, compute_capability=(8, 6), bnb_version=(0, 50), bnb_cuda=True)
GPU_TURING = HfSupport(cuda=True, compute_capability=(7, 5), bnb_version=(0, 50), bnb_cuda=True)
CPU_BNB = HfSupport(bnb_version=(0, 50))


@pytest.mark.parametrize("quant,method,support,on_gpu,expected", [
    ("nf4", "", GPU_AMPERE, True, None),
    ("nf4", "", CPU_BNB, False, None),
    ("int8", "", CPU_BNB, False, None),
    ("bf16", "", HfSupport(), False, None),
    ("nf4", "", HfSupport(cuda=True, compute_capability=(8, 6)), True, "NF4 \\(4-bit\\) needs bitsandbytes.*pip install"),
    ("int8", "", HfSupport(), False, "8-bit needs bitsandbytes"),
    ("nf4", "", HfSupport(cuda=True, bnb_version=(0, 50), bnb_cuda=False), True, "did not find its CUDA library"),
    ("nf4", "", HfSupport(bnb_version=(0, 43)), False, "needs bitsandbytes 0.46 or newer \\(installed: 0.43\\)"),
    ("gptq", "gptq", HfSupport(cuda=True), True, "requirements-gptq.txt"),
    ("gptq", "gptq", HfSupport(cuda=True, gptq=True), True, None),
    ("gptq", "", HfSupport(gptq=True), True, "needs a GPTQ checkpoint"),
    ("nf4", "gptq", GPU_AMPERE, True, "This is a GPTQ checkpoint"),
    ("bf16", "awq", GPU_AMPERE, True, "already quantised \\(awq\\)"),
])
def test_quantisation_problems_are_explained(quant, method, support, on_gpu, expected):
    problem = quantization_problem(quant, method, support, on_gpu)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        import re

        assert re.search(expected, problem), problem


def test_gptq_hint_says_how_to_enable_it():
    assert "pip install -r requirements-gptq.txt" in GPTQ_HINT and "CUDA build of torch" in GPTQ_HINT


@pytest.mark.parametrize("option,quant,support,expected", [
    ("auto", "nf4", GPU_AMPERE, "bf16"), ("auto", "nf4", GPU_TURING, "fp16"), ("auto", "nf4", CPU_BNB, "bf16"),
    ("fp16", "nf4", GPU_AMPERE, "fp16"), ("auto", "bf16", GPU_TURING, "bf16"), ("bf16", "fp16", GPU_AMPERE, "fp16"),
    ("auto", "gptq", GPU_AMPERE, "fp16"),
])
def test_compute_dtype(option, quant, support, expected):
    assert resolve_compute_dtype(option, quant, support) == expected


def test_attention_choice():
    flash = HfSupport(cuda=True, compute_capability=(9, 0), flash_attn=True)
    assert resolve_attention("auto", "bf16", flash) == "flash_attention_2"
    assert resolve_attention("auto", "bf16", GPU_AMPERE) == "sdpa"
    assert resolve_attention("auto", "bf16", HfSupport(flash_attn=True)) == "sdpa"  # no GPU
    assert resolve_attention("eager", "bf16", flash) == "eager"
    with pytest.raises(ValueError, match="flash_attn package is not installed"):
        resolve_attention("flash_attention_2", "bf16", GPU_AMPERE)
    with pytest.raises(ValueError, match="compute capability 8.0"):
        resolve_attention("flash_attention_2", "fp16", HfSupport(cuda=True, compute_capability=(7, 5), flash_attn=True))


def test_nf4_on_an_avx512_bf16_cpu_needs_rows_in_multiples_of_32():
    ok = [TensorInfo("model.layers.0.mlp.up_proj.weight", (704, 256)), TensorInfo("lm_head.weight", (32001, 256))]
    odd = TensorInfo("model.layers.0.mlp.gate_proj.weight", (688, 256))
    assert nf4_cpu_shape_problem(ok, ("lm_head",)) is None  # the head is not quantised: any size
    problem = nf4_cpu_shape_problem(ok + [odd], ("lm_head",))
    assert "multiple of 32" in problem and "model.layers.0.mlp.gate_proj has 688" in problem
    assert nf4_cpu_shape_problem(ok + [odd], ("lm_head", "gate_proj")) is None  # kept unquantised
