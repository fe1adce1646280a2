"""The repos of the local test Hub (tests/fake_hub.py), made by the tests: real small GGUFs (one
split into shards), header-only sparse GGUFs shaped like Llama-3.1-8B, a small safetensors
model, a pickle-only repo, one that needs remote code, a gated one, and one with hostile names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.fake_hub import FakeHub
from tools.synth_gguf import write as synth_gguf

TINY = "test-org/Tiny-GGUF"
LLAMA8B = "test-org/Llama-8B-GGUF"
SPLIT = "test-org/Split-GGUF"
SAFETENSORS = "test-org/Tiny-Safetensors"
PICKLE = "test-org/Pickle-Only"
REMOTE_CODE = "test-org/Remote-Code"
GATED = "test-org/Gated-GGUF"
EVIL = "evil-org/Traversal-GGUF"
EVIL_NAMES = ("../../evil-Q4_0.gguf", "sub/../../x-Q4_0.gguf", "/abs-Q4_0.gguf", "C:/win-Q4_0.gguf",
              "..\\win2-Q4_0.gguf", "\\\\host\\share\\unc-Q4_0.gguf", "./dot-Q4_0.gguf", "ok\x00-Q4_0.gguf")
HF_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 4096,
             "max_position_embeddings": 2048, "torch_dtype": "float16"}
GGUF_TAGS = ("gguf", "text-generation")
ST_TAGS = ("safetensors", "transformers", "text-generation")


def tiny_llama(path: Path, split_max_tensors: int = 0) -> list[Path]:
    """A 2-block llama GGUF of F32 zeros (~0.4 MB), split into shards when asked."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    w.add_name("tiny llama")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_feed_forward_length(128)
    w.add_context_length(2048)
    w.add_file_type(0)
    w.add_token_list([f"t{i}" for i in range(300)])
    w.add_tensor("token_embd.weight", np.zeros((300, 64), np.float32))
    for i in range(2):
        for name, shape in (("attn_q", (64, 64)), ("attn_k", (32, 64)), ("attn_v", (32, 64)),
                            ("attn_output", (64, 64)), ("ffn_gate", (128, 64)), ("ffn_up", (128, 64)),
                            ("ffn_down", (64, 128)), ("attn_norm", (64,)), ("ffn_norm", (64,))):
            w.add_tensor(f"blk.{i}.{name}.weight", np.zeros(shape, np.float32))
    w.add_tensor("output_norm.weight", np.zeros(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if not split_max_tensors:
        return [path]
    return sorted(path.parent.glob(path.stem + "-0*-of-*.gguf"))


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> None:
    """A safetensors file of zeros (the format: 8-byte header length, JSON header, tensor data)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(offset))


def _llama_tensors() -> dict[str, tuple[int, ...]]:
    from core.hf_model_shape import dims_from_config, tensors_from_dims

    return {t.name: t.shape for t in tensors_from_dims(dims_from_config(HF_CONFIG), "F16")}


def build_hub(root: Path) -> FakeHub:
    root.mkdir(parents=True, exist_ok=True)
    hub = FakeHub()
    readme = b"# a test model\n"
    q4 = synth_gguf(root / "tiny-Q4_0.gguf", "smollm2-135m", "Q4_0", layers=2)
    q8 = synth_gguf(root / "tiny-Q8_0.gguf", "smollm2-135m", "Q8_0", layers=2)
    hub.add_repo(TINY, {"README.md": readme, "tiny-Q4_0.gguf": q4, "tiny-Q8_0.gguf": q8}, GGUF_TAGS, downloads=900)
    big = {f"Llama-8B-{q}.gguf": synth_gguf(root / f"Llama-8B-{q}.gguf", "llama31-8b", q, sparse=True)
           for q in ("Q4_K_M", "Q8_0", "F16")}
    hub.add_repo(LLAMA8B, {"README.md": readme, **big, "mmproj-Llama-8B-F16.gguf": q4}, GGUF_TAGS, downloads=5000,
                 hash_content=False)
    (root / "split").mkdir(exist_ok=True)
    shards = tiny_llama(root / "split" / "tiny-F32.gguf", split_max_tensors=8)
    hub.add_repo(SPLIT, {f"F32/{p.name}": p for p in shards}, GGUF_TAGS, downloads=10)
    single = tiny_llama(root / "tiny-single-F32.gguf")[0]
    hub.add_repo(GATED, {"tiny-F32.gguf": single}, GGUF_TAGS, downloads=20, gated=True)
    evil = {name: b"GGUF" for name in EVIL_NAMES}
    hub.add_repo(EVIL, {**evil, "ok-F32.gguf": single}, GGUF_TAGS, downloads=1)

    st = root / "model.safetensors"
    write_safetensors(st, _llama_tensors())
    config = json.dumps(HF_CONFIG).encode()
    tok_cfg = json.dumps({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}).encode()
    hub.add_repo(SAFETENSORS, {"config.json": config, "tokenizer_config.json": tok_cfg, "tokenizer.json": b"{}",
                               "model.safetensors": st, "pytorch_model.bin": b"\x80\x04pickle", "README.md": readme,
                               "original/consolidated.safetensors": st}, ST_TAGS, downloads=300)
    hub.add_repo(PICKLE, {"config.json": config, "pytorch_model.bin": b"\x80\x04pickle", "tokenizer.json": b"{}"},
                 ("transformers", "pytorch", "text-generation"), downloads=200)
    remote = json.dumps({**HF_CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}).encode()
    hub.add_repo(REMOTE_CODE, {"config.json": remote, "model.safetensors": st, "modeling_evil.py": b"import os\n"},
                 ST_TAGS, downloads=100)
    return hub


def machines():
    """Two described machines to plan for: an RTX 3060 12 GB with 64 GB of RAM, and a CPU with 16 GB."""
    from core.hardware import GIB, GpuInfo, Hardware

    gpu = Hardware(gpus=(GpuInfo(0, "RTX 3060 12 GB", 12 * GIB, 12 * GIB - (300 << 20), bandwidth_bytes_per_s=360e9,
                                 compute_capability=(8, 6)),),
                   ram_total_bytes=64 * GIB, ram_available_bytes=60 * GIB, cpu_physical_cores=8, cpu_logical_cores=16,
                   cpu_flags=frozenset({"avx2"}), ram_bandwidth_bytes_per_s=50e9, llama_gpu_offload=True,
                   source="profile:test-3060")
    cpu = Hardware(gpus=(), ram_total_bytes=16 * GIB, ram_available_bytes=12 * GIB, cpu_physical_cores=8,
                   cpu_logical_cores=8, cpu_flags=frozenset({"avx2"}), ram_bandwidth_bytes_per_s=40e9,
                   source="profile:test-cpu16")
    return gpu, cpu
