"""llama.cpp's own memory plan for a configuration, without allocating it:

    python -m backends.dry_run MODEL.gguf --ctx 8192 --n-gpu-layers 20 --kv q8_0 [--no-flash-attn] [--ubatch 512]

Loads the model with ``no_alloc`` (which needs ``load_mode = NONE``: the default mmap mode aborts)
and creates a context, so llama.cpp logs the compute buffers it would reserve on each device.
Prints one JSON object: {"buffers": [{"device", "kind", "mib"}, ...]}. Model and KV buffers read 0
in a dry run; the planner computes those from the GGUF header. Runs in its own process.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys

from core.llama_log import parse_buffer_line

KV_GGML_TYPE = {"f16": 1, "q8_0": 8, "q4_0": 2}
_on_log = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dry_run")
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--kv", choices=sorted(KV_GGML_TYPE), default="f16")
    ap.add_argument("--no-flash-attn", action="store_true")
    ap.add_argument("--ubatch", type=int, default=512)
    a = ap.parse_args(argv)

    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    global _on_log  # llama.cpp keeps only the raw pointer, also for what it logs at exit
    _on_log = on_log
    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.no_alloc = True
    mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    mp.n_gpu_layers = 0x7FFFFFFF if a.n_gpu_layers < 0 else a.n_gpu_layers
    model = llama_cpp.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        print(json.dumps({"error": "llama.cpp could not read the model"}))
        return 1
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = a.ctx, a.ubatch, a.ubatch
    cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED if a.no_flash_attn
                          else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED)
    cp.type_k = cp.type_v = KV_GGML_TYPE[a.kv]
    ctx = llama_cpp.llama_init_from_model(model, cp)
    if not ctx:
        print(json.dumps({"error": "llama.cpp could not create the context"}))
        return 1
    buffers = [parse_buffer_line(line) for line in "".join(lines).splitlines()]
    print(json.dumps({"buffers": [{"device": d, "kind": k, "mib": m} for d, k, m in filter(None, buffers)]}))
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
