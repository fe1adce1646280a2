"""Synthetic GGUFs with the exact tensor shapes and quantisation layout of real models.

``--sparse`` writes only the header and extends the file to its full size without writing data
(a sparse file: no disk used), which is enough for header reading, planning and llama.cpp dry
runs. Without it the tensor data is written (zeros), which llama.cpp can load and run: speed
and memory do not depend on weight values.

    python -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/l8b.gguf --sparse
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHAPES = {
    # n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx_train, rope base
    "smollm2-135m": dict(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536, n_vocab=49152, ctx=8192, rope=1e5),
    "llama2-7b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008, n_vocab=32000, ctx=4096, rope=1e4),
    "llama31-8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, ctx=131072, rope=5e5),
    "mistral-7b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32768, ctx=32768, rope=1e6),
    "llama2-13b": dict(n_embd=5120, n_layer=40, n_head=40, n_head_kv=40, n_ff=13824, n_vocab=32000, ctx=4096, rope=1e4),
    "llama31-70b": dict(n_embd=8192, n_layer=80, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256, ctx=131072, rope=5e5),
}
# ggml type ids
F32, F16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 2, 8, 12, 13, 14
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


def write(out: Path, shape: str, quant: str = "Q4_K_M", layers: int | None = None, sparse: bool = False,
          chat_template: str | None = None) -> Path:
    import gguf
    import numpy as np

    s = dict(SHAPES[shape])
    if layers:
        s["n_layer"] = layers
    E, L, H, HKV, FF, V = s["n_embd"], s["n_layer"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"]
    hd = E // H
    types = tensor_types(quant, L)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(f"synthetic-{shape}-{quant}")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope"])
    w.add_vocab_size(V)
    w.add_file_type(FILE_TYPE[quant])
    tokens, scores, token_types = synthetic_vocab(V)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(token_types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if chat_template:
        w.add_chat_template(chat_template)

    tensors: list[tuple[str, tuple[int, int], int]] = [("token_embd.weight", (V, E), types["token_embd"])]
    for i in range(L):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", (E,), F32), (p + "attn_q.weight", (H * hd, E), types["default"]),
                    (p + "attn_k.weight", (HKV * hd, E), types["default"]),
                    (p + "attn_v.weight", (HKV * hd, E), types["attn_v"](i)),
                    (p + "attn_output.weight", (E, H * hd), types["default"]), (p + "ffn_norm.weight", (E,), F32),
                    (p + "ffn_gate.weight", (FF, E), types["default"]), (p + "ffn_up.weight", (FF, E), types["default"]),
                    (p + "ffn_down.weight", (E, FF), types["ffn_down"](i))]
    tensors += [("output_norm.weight", (E,), F32), ("output.weight", (V, E), types["output"])]

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
    data_start = fh.tell()
    data_start += -data_start % align
    fh.seek(data_start)
    total = data_start
    for n in sizes:
        total += n + (-n % align)
    if sparse:
        fh.truncate(total)
    else:
        chunk = bytes(1 << 20)
        for n in sizes:
            left = n + (-n % align)
            while left:
                step = min(left, len(chunk))
                fh.write(chunk[:step])
                left -= step
    fh.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--quant", default="Q4_K_M", choices=sorted(FILE_TYPE))
    ap.add_argument("--layers", type=int)
    ap.add_argument("--sparse", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    path = write(a.out, a.shape, a.quant, a.layers, a.sparse)
    print(path, os.path.getsize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
