"""Synthetic GGUFs with the exact tensor shapes and quantisation layout of real models.

``--sparse`` writes only the header and extends the file to its full size without writing data
(a sparse file: no disk used); it reads back as zeros, so llama.cpp can load and run it too.
Without it the tensor data is written (zeros). Speed and memory do not depend on weight values,
except an MoE's routing: ``--varied-routing`` makes tokens reach different experts.

    python -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/l8b.gguf --sparse
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHAPES = {
    # n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx_train, rope base; optional: arch, head_dim
    # (explicit, when n_head * head_dim != n_embd), qkv_bias, qk_norm, tied, and for MoE n_expert,
    # n_expert_used, n_ff_exp (one expert's FFN), n_ff_shexp (shared expert FFN, 0 = none)
    "smollm2-135m": dict(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536, n_vocab=49152, ctx=8192, rope=1e5),
    "llama2-7b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008, n_vocab=32000, ctx=4096, rope=1e4),
    "llama31-8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, ctx=131072, rope=5e5),
    "mistral-7b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32768, ctx=32768, rope=1e6),
    "llama2-13b": dict(n_embd=5120, n_layer=40, n_head=40, n_head_kv=40, n_ff=13824, n_vocab=32000, ctx=4096, rope=1e4),
    "llama31-70b": dict(n_embd=8192, n_layer=80, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256, ctx=131072, rope=5e5),
    # Dense shapes the planner was not fitted on: explicit head_dim, 131k-152k vocabularies, qwen2 biases.
    "nemo-12b": dict(n_embd=5120, n_layer=40, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=131072, ctx=131072,
                     rope=1e6, head_dim=128),
    "qwen25-14b": dict(arch="qwen2", n_embd=5120, n_layer=48, n_head=40, n_head_kv=8, n_ff=13824, n_vocab=152064,
                       ctx=131072, rope=1e6, qkv_bias=True),
    # Mixture of experts.
    "qwen3moe-30b-a3b": dict(arch="qwen3moe", n_embd=2048, n_layer=48, n_head=32, n_head_kv=4, n_ff=6144,
                             n_vocab=151936, ctx=262144, rope=1e7, head_dim=128, qk_norm=True, n_expert=128,
                             n_expert_used=8, n_ff_exp=768),
    "qwen2moe-a2.7b": dict(arch="qwen2moe", n_embd=2048, n_layer=24, n_head=16, n_head_kv=16, n_ff=5632,
                           n_vocab=151936, ctx=8192, rope=1e6, qkv_bias=True, n_expert=60, n_expert_used=4,
                           n_ff_exp=1408, n_ff_shexp=5632),
    # Small enough to load and generate on a CPU in tests (expert offload for real).
    "tiny-moe": dict(arch="qwen3moe", n_embd=128, n_layer=4, n_head=4, n_head_kv=2, n_ff=256, n_vocab=512,
                     ctx=4096, rope=1e6, head_dim=32, qk_norm=True, n_expert=8, n_expert_used=2, n_ff_exp=64),
}
# ggml type ids
F32, F16, Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 2, 6, 7, 8, 12, 13, 14
FILE_TYPE = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def _more_bits(i: int, n: int) -> bool:
    # llama.cpp's use_more_bits(): the first and last eighth, and every third layer between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_types(quant: str, n_layer: int) -> dict:
    """Per-role ggml types that llama-quantize picks for this file type."""
    if quant == "Q4_K_M":
        return dict(default=Q4_K, token_embd=Q4_K, output=Q6_K,
                    attn_v=lambda i: Q6_K if _more_bits(i, n_layer) else Q4_K,
                    ffn_down=lambda i: Q6_K if _more_bits(i, n_layer) else Q4_K)
    if quant == "Q5_K_M":
        return dict(default=Q5_K, token_embd=Q5_K, output=Q6_K,
                    attn_v=lambda i: Q6_K if _more_bits(i, n_layer) else Q5_K,
                    ffn_down=lambda i: Q6_K if _more_bits(i, n_layer) else Q5_K)
    single = {"F16": F16, "Q4_0": Q4_0, "Q8_0": Q8_0, "Q6_K": Q6_K}[quant]
    out = Q6_K if quant in ("Q4_0",) else single
    return dict(default=single, token_embd=single, output=out, attn_v=lambda i: single, ffn_down=lambda i: single)


def synthetic_vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM-style vocabulary of ``n`` tokens: <unk>, <s>, </s>, the 256 byte tokens, then fillers."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(n - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (n - 259)
    return tokens, [0.0] * n, types


def tensor_list(s: dict, quant: str) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, numpy shape = ggml ne reversed, ggml type) of every tensor of shape ``s``."""
    E, L, H, HKV, FF, V = s["n_embd"], s["n_layer"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"]
    hd = s.get("head_dim") or E // H
    types = tensor_types(quant, L)
    out = [("token_embd.weight", (V, E), types["token_embd"])]
    for i in range(L):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (E,), F32), (p + "attn_q.weight", (H * hd, E), types["default"]),
                (p + "attn_k.weight", (HKV * hd, E), types["default"]),
                (p + "attn_v.weight", (HKV * hd, E), types["attn_v"](i)),
                (p + "attn_output.weight", (E, H * hd), types["default"]), (p + "ffn_norm.weight", (E,), F32)]
        if s.get("qkv_bias"):
            out += [(p + "attn_q.bias", (H * hd,), F32), (p + "attn_k.bias", (HKV * hd,), F32),
                    (p + "attn_v.bias", (HKV * hd,), F32)]
        if s.get("qk_norm"):
            out += [(p + "attn_q_norm.weight", (hd,), F32), (p + "attn_k_norm.weight", (hd,), F32)]
        if s.get("n_expert"):
            X, FX = s["n_expert"], s["n_ff_exp"]
            out += [(p + "ffn_gate_inp.weight", (X, E), F32),
                    (p + "ffn_gate_exps.weight", (X, FX, E), types["default"]),
                    (p + "ffn_up_exps.weight", (X, FX, E), types["default"]),
                    (p + "ffn_down_exps.weight", (X, E, FX), types["ffn_down"](i))]
            if s.get("n_ff_shexp"):
                SH = s["n_ff_shexp"]
                out += [(p + "ffn_gate_inp_shexp.weight", (E,), F32),
                        (p + "ffn_gate_shexp.weight", (SH, E), types["default"]),
                        (p + "ffn_up_shexp.weight", (SH, E), types["default"]),
                        (p + "ffn_down_shexp.weight", (E, SH), types["ffn_down"](i))]
        else:
            out += [(p + "ffn_gate.weight", (FF, E), types["default"]), (p + "ffn_up.weight", (FF, E), types["default"]),
                    (p + "ffn_down.weight", (E, FF), types["ffn_down"](i))]
    out.append(("output_norm.weight", (E,), F32))
    if not s.get("tied"):
        out.append(("output.weight", (V, E), types["output"]))
    # llama-quantize's fallback for rows that are no multiple of a k-quant's 256-value block
    fallback = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}
    return [(n, sh, fallback[t] if t in fallback and sh[-1] % 256 else t) for n, sh, t in out]


def write(out: Path, shape: str, quant: str = "Q4_K_M", layers: int | None = None, sparse: bool = False,
          chat_template: str | None = None, varied_routing: bool = False, seed: int = 0) -> Path:
    """Write the GGUF. ``varied_routing`` (MoE): random input embeddings (F16) and router weights, so
    that tokens are routed to different experts as in a real model (with all-zero weights every
    token would pick the same experts, which caches unrealistically well); the rest stays zero."""
    import gguf
    import numpy as np

    s = dict(SHAPES[shape])
    if layers:
        s["n_layer"] = layers
    arch = s.get("arch", "llama")
    E, L, H, HKV, FF, V = s["n_embd"], s["n_layer"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"]
    hd = s.get("head_dim") or E // H
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(f"synthetic-{shape}-{quant}")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    if s.get("head_dim"):
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6 if arch != "llama" else 1e-5)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope"])
    w.add_vocab_size(V)
    w.add_file_type(FILE_TYPE[quant])
    if s.get("n_expert"):
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
        w.add_expert_feed_forward_length(s["n_ff_exp"])
        if s.get("n_ff_shexp"):
            w.add_expert_shared_feed_forward_length(s["n_ff_shexp"])
    tokens, scores, token_types = synthetic_vocab(V)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(token_types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if chat_template:
        w.add_chat_template(chat_template)

    tensors = tensor_list(s, quant)
    randomised = set()
    if varied_routing and s.get("n_expert"):
        tensors = [(n, sh, F16 if n == "token_embd.weight" else t) for n, sh, t in tensors]
        randomised = {n for n, _, _ in tensors if n == "token_embd.weight" or n.endswith("ffn_gate_inp.weight")}
    sizes = []
    for name, np_shape, ggml_type in tensors:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        n_bytes = int(np.prod(np_shape)) // block * size
        # raw_shape is numpy order of the *byte* array for quantised types
        if ggml_type in (F32, F16):
            w.add_tensor_info(name, np_shape, np.dtype(np.float32 if ggml_type == F32 else np.float16), n_bytes,
                              raw_dtype=gguf.GGMLQuantizationType(ggml_type))
        else:
            byte_shape = (*np_shape[:-1], np_shape[-1] // block * size)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes,
                              raw_dtype=gguf.GGMLQuantizationType(ggml_type))
        sizes.append(n_bytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fh = w.fout[0] if isinstance(w.fout, list) else w.fout
    fh.flush()
    align = w.data_alignment
    offset = fh.tell()
    offset += -offset % align
    rng = np.random.default_rng(seed)
    chunk = bytes(1 << 20)
    for (name, np_shape, ggml_type), n in zip(tensors, sizes):
        fh.seek(offset)
        if name in randomised:
            dtype = np.float32 if ggml_type == F32 else np.float16
            fh.write(rng.standard_normal(int(np.prod(np_shape)), dtype=np.float32).astype(dtype).tobytes())
        elif not sparse:
            left = n
            while left:
                step = min(left, len(chunk))
                fh.write(chunk[:step])
                left -= step
        offset += n + (-n % align)
    fh.truncate(offset)
    fh.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--quant", default="Q4_K_M", choices=sorted(FILE_TYPE))
    ap.add_argument("--layers", type=int)
    ap.add_argument("--sparse", action="store_true")
    ap.add_argument("--varied-routing", action="store_true",
                    help="MoE: random embeddings and router so tokens reach different experts")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    path = write(a.out, a.shape, a.quant, a.layers, a.sparse, varied_routing=a.varied_routing)
    print(path, os.path.getsize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
