"""The shape of a transformers (safetensors) model as plain data: its dimensions from config.json
and its tensor table (names, shapes, dtypes), and which tensors bitsandbytes would quantise.

Pure: ``services.hf_repo`` reads the files; ``core.hf_memory`` turns this into bytes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

# Bytes per element of the dtypes safetensors headers name.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder_layers)\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|wpe|word_embeddings|embed_in|embed_positions|tok_embeddings)\.")
_HEAD = re.compile(r"^(?:lm_head|embed_out|output)\.")


class ConfigError(ValueError):
    """config.json lacks what a decoder-only model needs; the message says which key."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str = "BF16"  # safetensors dtype name

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def stored_bytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 2)

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""


@dataclass(frozen=True)
class ModelDims:
    """The numbers of config.json that decide memory (of the text model, for multimodal configs)."""
    model_type: str
    n_layer: int
    hidden_size: int
    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False

    @property
    def kv_elements_per_token(self) -> int:
        """K and V elements per token over all layers (times the element size = KV bytes per token)."""
        return 2 * self.n_layer * self.n_kv_head * self.head_dim


def _first(config: dict, keys: Sequence[str], default=None):
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return default


def _positive_int(config: dict, keys: Sequence[str], default=None) -> int:
    value = _first(config, keys, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value > 1 << 40:
        raise ConfigError(f"config.json has no usable {keys[0]} (got {value!r})")
    return value


def dims_from_config(config: dict) -> ModelDims:
    """``ModelDims`` from a parsed config.json; ConfigError names the missing key."""
    if not isinstance(config, dict):
        raise ConfigError("config.json is not a JSON object")
    text = config.get("text_config")
    cfg = {**config, **text} if isinstance(text, dict) and "num_hidden_layers" not in config else config
    hidden = _positive_int(cfg, ("hidden_size", "n_embd", "d_model"))
    n_head = _positive_int(cfg, ("num_attention_heads", "n_head"))
    head_dim = cfg.get("head_dim") or hidden // n_head
    return ModelDims(
        model_type=str(config.get("model_type", "")),
        n_layer=_positive_int(cfg, ("num_hidden_layers", "n_layer", "num_layers")),
        hidden_size=hidden,
        n_head=n_head,
        n_kv_head=_positive_int(cfg, ("num_key_value_heads", "n_head_kv", "num_kv_heads"), n_head),
        head_dim=_positive_int({"head_dim": head_dim}, ("head_dim",)),
        intermediate_size=_positive_int(cfg, ("intermediate_size", "ffn_dim", "n_inner"), 4 * hidden),
        vocab_size=_positive_int(cfg, ("vocab_size",)),
        max_position_embeddings=_positive_int(cfg, ("max_position_embeddings", "n_positions", "max_seq_len",
                                                    "seq_length"), 2048),
        tie_word_embeddings=bool(_first(cfg, ("tie_word_embeddings",), False)),
    )


def tensors_from_dims(dims: ModelDims, dtype: str = "BF16") -> tuple[TensorInfo, ...]:
    """The tensor table of a Llama-layout decoder with these dimensions (q/k/v/o, gate/up/down,
    two norms per block). For planning before the files are local; local files give the real table."""
    h, q, kv, ff = dims.hidden_size, dims.n_head * dims.head_dim, dims.n_kv_head * dims.head_dim, dims.intermediate_size
    tensors = [TensorInfo("model.embed_tokens.weight", (dims.vocab_size, h), dtype)]
    for i in range(dims.n_layer):
        p = f"model.layers.{i}."
        tensors += [
            TensorInfo(p + "self_attn.q_proj.weight", (q, h), dtype),
            TensorInfo(p + "self_attn.k_proj.weight", (kv, h), dtype),
            TensorInfo(p + "self_attn.v_proj.weight", (kv, h), dtype),
            TensorInfo(p + "self_attn.o_proj.weight", (h, q), dtype),
            TensorInfo(p + "mlp.gate_proj.weight", (ff, h), dtype),
            TensorInfo(p + "mlp.up_proj.weight", (ff, h), dtype),
            TensorInfo(p + "mlp.down_proj.weight", (h, ff), dtype),
            TensorInfo(p + "input_layernorm.weight", (h,), dtype),
            TensorInfo(p + "post_attention_layernorm.weight", (h,), dtype),
        ]
    tensors.append(TensorInfo("model.norm.weight", (h,), dtype))
    if not dims.tie_word_embeddings:
        tensors.append(TensorInfo("lm_head.weight", (dims.vocab_size, h), dtype))
    return tuple(tensors)


def block_index(name: str) -> Optional[int]:
    """The decoder block a tensor belongs to (``model.layers.7.mlp...`` -> 7), None outside blocks."""
    match = _BLOCK.search(name)
    return int(match[1]) if match else None


def group_name(name: str) -> str:
    """The placement unit of a tensor: its decoder block (``model.layers.7``) or else its module."""
    match = _BLOCK.search(name)
    if match:
        return name[: match.end() - 1]
    return name.rsplit(".", 1)[0] if "." in name else ""


def is_embedding(name: str) -> bool:
    return bool(_EMBEDDING.search("." + name))


def is_head(name: str) -> bool:
    return bool(_HEAD.match(name))


def matches_module(module: str, patterns: Iterable[str]) -> bool:
    """transformers' rule for ``llm_int8_skip_modules``: a pattern matches from the start up to a
    module boundary (as a regex), or as a suffix."""
    for key in patterns:
        if module.endswith(key) or re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", module):
            return True
    return False


def default_skip_modules(tensors: Sequence[TensorInfo]) -> tuple[str, ...]:
    """What bitsandbytes keeps unquantised by default: the output head (or the embedding it is tied to)."""
    heads = sorted({t.module for t in tensors if is_head(t.name)})
    return tuple(heads) or ("lm_head",)


def quantized_by_bnb(tensor: TensorInfo, skip_modules: Iterable[str]) -> bool:
    """Whether bitsandbytes replaces this tensor's module by a quantised Linear: the 2-D weights of
    linear layers, except embeddings, the head and the modules kept out of quantisation."""
    return (len(tensor.shape) == 2 and tensor.name.endswith(".weight") and tensor.dtype in FLOAT_DTYPES
            and not is_embedding(tensor.name) and not is_head(tensor.name)
            and not matches_module(tensor.module, skip_modules))


def parameter_count(tensors: Iterable[TensorInfo]) -> int:
    return sum(t.numel for t in tensors)
