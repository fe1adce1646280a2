"""A safetensors checkpoint of the embedded model, made at test time (no download): transformers
reads the GGUF dequantised (``gguf_file=``), we drop its GGUF quantiser and save bf16 safetensors
with the tokenizer (and its chat template). About 20 s on 2 cores.

    python -m tests.hf_checkpoint OUT_DIR      (runs in a child process: keeps torch out of pytest)
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_checkpoint(out: Path) -> Path:
    """Build in a child process (torch and transformers stay out of the test process)."""
    subprocess.run([sys.executable, "-m", "tests.hf_checkpoint", str(out)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    return out


def _build(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.paths import embedded_model_path

    gguf = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a GGUF quantiser; save_pretrained would refuse or re-quantise.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _build(Path(sys.argv[1]))
