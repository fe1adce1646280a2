"""The transformers memory estimator's prediction for a synthetic shape, to set beside a measurement.

    .venv/bin/python bench/hf_predict.py --shape llama2-7b --quant nf4 --ctx 4096 --kv-tokens 26

Prints the predicted GPU memory (MiB) by purpose, for the whole model on the GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic_hf_model import SHAPES  # noqa: E402
from core.hf_memory import MIB, HfMemorySettings, estimate_memory  # noqa: E402
from core.hf_model_shape import dims_from_config, tensors_from_dims  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--kv-tokens", type=int, help="tokens in the KV cache (default: the whole context)")
    a = ap.parse_args()
    dims = dims_from_config({"model_type": "llama", **SHAPES[a.shape], "tie_word_embeddings": False})
    est = estimate_memory(dims, tensors_from_dims(dims), HfMemorySettings(a.quant, "bf16", n_ctx=a.ctx),
                          kv_tokens=a.kv_tokens)
    print(json.dumps({"gpu_total_mib": round(est.gpu.total / MIB, 1),
                      **{f"{k}_mib": round(v / MIB, 1) for k, v in vars(est.gpu).items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
