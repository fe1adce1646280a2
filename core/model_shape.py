"""A model's shape for planning: dimensions and the byte size of every group of weights.

Built from GGUF headers (one, or all shards of a split model) without reading any weights.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

from core.gguf_header import GGML_TYPES, ArraySummary, GGUFError, GGUFHeader

_BLOCK = re.compile(r"^blk\.(\d+)\.")
# Routed expert tensors, as llama.cpp's --n-cpu-moe finds them (LLM_FFN_EXPS_REGEX): ffn_{up,down,gate}_exps
# (also a fused gate_up, and the "chexps" of some models), weights and biases.
_EXPERTS = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps\.")
_SPLIT_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# llama.cpp file types (general.file_type) -> the usual quantisation label
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
              23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
              29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4"}


@dataclass(frozen=True)
class ModelShape:
    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]      # per layer (GQA); the same value repeated for most models
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    block_bytes: tuple[int, ...]    # weights of each repeating block
    token_embd_bytes: int           # the input embedding: llama.cpp keeps it in host memory
    output_bytes: int               # the output head (a copy of token_embd when tied) + output norm
    other_bytes: int                # anything else outside the blocks (e.g. rope_freqs)
    output_tied: bool = False
    quantization: str = ""
    file_bytes: int = 0
    n_params: int = 0
    sliding_window: int = 0         # 0 = no sliding-window layers
    # Mixture of experts (all 0 / () for a dense model)
    n_expert: int = 0               # routed experts per MoE layer
    n_expert_used: int = 0          # experts each token is routed to
    n_ff_exp: int = 0               # FFN length of one expert
    n_expert_shared: int = 0        # shared experts (run for every token)
    expert_bytes: tuple[int, ...] = ()  # per block: bytes of its routed expert tensors (ffn_*_exps)

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0 and any(self.expert_bytes)

    def block_expert_bytes(self, layer: int) -> int:
        return self.expert_bytes[layer] if layer < len(self.expert_bytes) else 0

    def active_block_bytes(self, layer: int) -> float:
        """Bytes of block ``layer`` one decoded token reads: all of it for a dense block; for an MoE
        block the attention, router and shared experts plus the share of the routed experts it uses."""
        experts = self.block_expert_bytes(layer)
        if not experts or not self.n_expert:
            return float(self.block_bytes[layer])
        return self.block_bytes[layer] - experts + experts * self.n_expert_used / self.n_expert

    @property
    def weight_bytes(self) -> int:
        tied_copy = self.token_embd_bytes if self.output_tied else 0
        return sum(self.block_bytes) + self.token_embd_bytes + self.output_bytes + self.other_bytes - tied_copy

    def kv_bytes_per_token(self, layer: int, bytes_per_k: float, bytes_per_v: float) -> float:
        heads = self.n_head_kv[layer] if layer < len(self.n_head_kv) else self.n_head_kv[-1]
        return heads * (self.head_dim_k * bytes_per_k + self.head_dim_v * bytes_per_v)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelShape":
        data = dict(data)
        data["n_head_kv"] = tuple(data["n_head_kv"])
        data["block_bytes"] = tuple(data["block_bytes"])
        data["expert_bytes"] = tuple(data.get("expert_bytes", ()))
        return cls(**data)


def split_info(filename: str) -> Optional[tuple[str, int, int]]:
    """``("name", 1, 3)`` for ``name-00001-of-00003.gguf``, else None."""
    match = _SPLIT_NAME.match(filename)
    if not match:
        return None
    return match["stem"], int(match["no"]), int(match["count"])


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GGUFError(f"metadata {what} is missing or not an integer")
    return value


def _per_layer(value: Any, n_layer: int, what: str) -> tuple[int, ...]:
    if isinstance(value, list):
        if len(value) != n_layer or not all(isinstance(v, int) for v in value):
            raise GGUFError(f"metadata {what} has {len(value)} entries for {n_layer} layers")
        return tuple(value)
    return (_int(value, what),) * n_layer


def shape_from_headers(headers: Iterable[GGUFHeader], name: str = "", file_bytes: int = 0) -> ModelShape:
    """Combine the headers of a model (all shards of a split GGUF, in any order)."""
    headers = list(headers)
    if not headers:
        raise GGUFError("no GGUF header given")
    first = next((h for h in headers if h.metadata.get("split.no", 0) == 0), headers[0])
    expected = first.metadata.get("split.count", 1)
    if isinstance(expected, int) and expected != len(headers):
        raise GGUFError(f"this model is split into {expected} files but {len(headers)} were given")
    meta = first.metadata
    arch = first.architecture
    if not arch:
        raise GGUFError("metadata general.architecture is missing")

    def arch_key(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_layer = _int(arch_key("block_count"), f"{arch}.block_count")
    n_embd = _int(arch_key("embedding_length"), f"{arch}.embedding_length")
    head_counts = _per_layer(arch_key("attention.head_count"), n_layer, f"{arch}.attention.head_count")
    n_head = max(head_counts) if head_counts else 0
    kv_raw = arch_key("attention.head_count_kv", arch_key("attention.head_count"))
    n_head_kv = _per_layer(kv_raw, n_layer, f"{arch}.attention.head_count_kv")
    if n_layer <= 0 or n_embd <= 0 or n_head <= 0:
        raise GGUFError("block_count, embedding_length and head_count must be positive")
    head_dim_k = arch_key("attention.key_length") or n_embd // n_head
    head_dim_v = arch_key("attention.value_length") or n_embd // n_head
    ff = arch_key("feed_forward_length", 0)
    n_ff = max(ff) if isinstance(ff, list) else (ff or 0)
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = tokens.length if isinstance(tokens, ArraySummary) else (
        len(tokens) if isinstance(tokens, list) else int(arch_key("vocab_size", 0) or 0))

    blocks = [0] * n_layer
    experts = [0] * n_layer
    expert_tensors: list = []
    token_embd = output = other = 0
    has_output = False
    n_params = 0
    for header in headers:
        for t in header.tensors:
            n_params += t.n_elements
            match = _BLOCK.match(t.name)
            if match:
                index = int(match.group(1))
                if index >= n_layer:
                    raise GGUFError(f"tensor {t.name} belongs to block {index} but the model has {n_layer}")
                blocks[index] += t.n_bytes
                if _EXPERTS.search(t.name):
                    experts[index] += t.n_bytes
                    expert_tensors.append(t)
            elif t.name == "token_embd.weight":
                token_embd += t.n_bytes
            elif t.name.startswith("output"):
                output += t.n_bytes
                has_output = has_output or t.name == "output.weight"
            else:
                other += t.n_bytes
    tied = not has_output
    if tied:
        output += token_embd  # llama.cpp duplicates the embedding as the output head
    file_type = meta.get("general.file_type")
    quant = FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else ""
    swa = arch_key("attention.sliding_window", 0)
    moe = _moe_facts(arch_key, arch, expert_tensors, n_layer)
    return ModelShape(
        name=name or str(meta.get("general.name", "")), architecture=arch, n_layer=n_layer, n_embd=n_embd,
        n_head=n_head, n_head_kv=n_head_kv, head_dim_k=int(head_dim_k), head_dim_v=int(head_dim_v),
        n_ff=int(n_ff), n_vocab=n_vocab, n_ctx_train=int(arch_key("context_length", 0) or 0),
        block_bytes=tuple(blocks), token_embd_bytes=token_embd, output_bytes=output, other_bytes=other,
        output_tied=tied, quantization=quant, file_bytes=file_bytes, n_params=n_params,
        sliding_window=int(swa) if isinstance(swa, int) else 0,
        expert_bytes=tuple(experts) if moe else (), **moe,
    )


MAX_EXPERTS = 4096   # the largest MoE models have a few hundred experts per layer


def _moe_facts(arch_key, arch: str, tensors: list, n_layer: int) -> dict:
    """Expert count, experts per token, expert FFN length and shared experts, from the metadata,
    checked against the expert tensors (``blk.N.ffn_{gate,up,down}_exps``: ne = [n_embd or n_ff_exp,
    n_ff_exp or n_embd, n_expert]). {} for a dense model; GGUFError when they disagree."""
    count = arch_key("expert_count")
    used = arch_key("expert_used_count")
    if not tensors:
        if isinstance(count, int) and not isinstance(count, bool) and count > 1:
            raise GGUFError(f"metadata {arch}.expert_count is {count} but the file has no expert tensors")
        return {}
    for value, key in ((count, "expert_count"), (used, "expert_used_count")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise GGUFError(f"this mixture-of-experts model has no integer {arch}.{key} in its metadata")
    if not 1 <= count <= MAX_EXPERTS:
        raise GGUFError(f"metadata {arch}.expert_count is {count}; a mixture-of-experts model has 1..{MAX_EXPERTS}")
    if not 1 <= used <= count:
        raise GGUFError(f"metadata {arch}.expert_used_count is {used}: it must be 1..{arch}.expert_count ({count})")
    ff_exp = arch_key("expert_feed_forward_length", 0)
    lengths = set()
    for t in tensors:
        if t.name.endswith(".bias"):
            if t.shape[-1] != count:
                raise GGUFError(f"tensor {t.name} has shape {list(t.shape)} but the metadata says {count} experts")
            continue
        if len(t.shape) != 3 or t.shape[2] != count:
            raise GGUFError(f"tensor {t.name} has shape {list(t.shape)} but the metadata says {count} experts "
                            "(expected [rows, columns, experts])")
        lengths.add(t.shape[0] if "_down_" in t.name else t.shape[1])
    if isinstance(ff_exp, int) and ff_exp > 0 and lengths and lengths != {ff_exp} and lengths != {2 * ff_exp}:
        raise GGUFError(f"expert tensors have FFN lengths {sorted(lengths)} but the metadata says "
                        f"{arch}.expert_feed_forward_length = {ff_exp}")
    if len(lengths) > 1 and not (isinstance(ff_exp, int) and ff_exp > 0):
        raise GGUFError(f"expert tensors disagree on the expert FFN length ({sorted(lengths)})")
    shared = arch_key("expert_shared_count", 0)
    return {"n_expert": count, "n_expert_used": used,
            "n_ff_exp": int(ff_exp) if isinstance(ff_exp, int) and ff_exp > 0 else min(lengths, default=0),
            "n_expert_shared": int(shared) if isinstance(shared, int) and not isinstance(shared, bool) else 0}


def type_bytes_per_value(type_name: str) -> float:
    """Bytes per element of a ggml type by name (e.g. KV cache types)."""
    for name, block, size in GGML_TYPES.values():
        if name.lower() == type_name.lower():
            return size / block
    raise ValueError(f"unknown ggml type {type_name!r}")
