"""A randomly initialised Llama-shaped model saved as safetensors, with a word-level tokenizer of
the same vocabulary and a chat template: speed and memory do not depend on weight values, and
nothing is downloaded. The model has no end-of-sequence token, so every timed reply runs to its
token limit.

    python bench/synthetic_hf_model.py --shape llama2-7b --device cuda --out /tmp/fitchat-synth/llama2-7b
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = {
    # Llama-2-7B: hidden 4096, 32 layers, 32 heads (MHA), MLP 11008, vocab 32000
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096),
    # small enough for a 2-core CPU; same structure
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=704, vocab_size=32000, max_position_embeddings=4096),
}
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")
MARKER = "fitchat-synthetic.json"


def build(shape: str, device: str, out: Path) -> dict:
    """Build (or reuse) the model folder; returns what was built and how long it took."""
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("shape") == shape:
        return {**json.loads(marker.read_text()), "reused": True}
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    started = time.monotonic()
    dims = SHAPES[shape]
    config = LlamaConfig(**dims, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # random init straight in bf16: 13.5 GB, not 27
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    del model
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, dims["vocab_size"])}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    info = {"shape": shape, "dims": dims, "build_s": round(time.monotonic() - started, 1),
            "bytes": sum(p.stat().st_size for p in out.glob("*.safetensors"))}
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


def prompt_words(n: int, seed: int = 1) -> str:
    """A prompt of ``n`` in-vocabulary words (one token each)."""
    return " ".join(f"w{(seed * 7919 + i * 104729) % 31000 + 1}" for i in range(n))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(build(args.shape, args.device, args.out)))
