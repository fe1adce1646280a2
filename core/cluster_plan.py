"""Plan a deployment for a cluster: vLLM with tensor and pipeline parallelism across GPUs and nodes,
or llama.cpp's ``llama-server --parallel`` on one big box. Pure functions of config.json and a
cluster profile; the formulas and their sources are in docs/ARCHITECTURE.md ("Cluster planning").

vLLM, as its code computes it (vllm/v1/kv_cache_interface.py, vllm/v1/core/kv_cache_utils.py):
  page bytes (one block, one layer) = block_size * kv_heads_per_gpu * (head_dim + head_dim_v) * dtype bytes
  kv_heads_per_gpu                  = max(1, n_kv_heads // tp)
  budget per GPU                    = total memory * gpu_memory_utilization - weights - activations - graphs
  GPU blocks                        = budget // page bytes // layers on that GPU
  tokens in cache                   = blocks * block_size;  concurrency = tokens / max_model_len
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from core.hf_model_shape import ConfigError, ModelDims, dims_from_config

GIB = 1 << 30
BLOCK_SIZE = 16                  # vLLM's default block (CacheConfig.DEFAULT_BLOCK_SIZE)
DEFAULT_UTILIZATION = 0.9        # vLLM's --gpu-memory-utilization default (0.9; 0.92 in the newest releases)
MAX_NUM_BATCHED_TOKENS = 8192    # vLLM's profiling batch for online serving on big GPUs
MAX_NUM_SEQS = 256               # vLLM's default --max-num-seqs (its sampler is profiled at this many rows)
# CUDA graphs, NCCL and cuBLAS buffers, torch.compile: the least certain number here. 2.5 GiB brings
# the one published point that gives every term (vLLM PR 12569, docs/ARCHITECTURE.md) within 3 %.
GRAPH_AND_RUNTIME_BYTES = int(2.5 * GIB)
DECODE_EFFICIENCY = 0.7          # fraction of peak memory bandwidth a decode step reaches

WeightDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2 / 128}  # int4: + group scales
KvDtype = Literal["auto", "fp8"]

# llama.cpp GGUF quantisations: bits per weight (ggml's block sizes, e.g. Q4_K is 144 bytes per 256).
GGUF_BITS = {"Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K_M": 5.69, "Q4_K_M": 4.85, "Q3_K_M": 3.91, "IQ2_XS": 2.31}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ClusterProfile(_Strict):
    """A cluster as a profile YAML describes it (profiles/clusters/*.yaml)."""
    name: str = Field(max_length=100)
    description: str = Field("", max_length=500)
    nodes: int = Field(ge=1, le=1024)
    gpus_per_node: int = Field(ge=1, le=64)
    gpu_name: str = Field(max_length=100)
    vram_gib: float = Field(gt=0, le=4096)
    bandwidth_gb_s: float = Field(gt=0, le=100000, description="each GPU's memory bandwidth")
    intra_node: Literal["nvlink", "pcie"] = "nvlink"
    intra_node_gb_s: float = Field(gt=0, le=100000, description="GPU-to-GPU bandwidth inside a node")
    inter_node_gb_s: float = Field(0.0, ge=0, le=100000, description="network bandwidth between nodes")

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class ClusterModel:
    """What the planner needs from config.json, with the weights in bytes for a chosen dtype."""
    name: str
    dims: ModelDims
    block_bytes: int            # all decoder blocks' weights
    embed_bytes: int            # input embedding (vocab-parallel under TP)
    head_bytes: int             # output head (0 when tied to the embedding)
    active_block_bytes: int     # what one token reads per block (MoE: only the routed experts)
    weight_dtype: str
    experts: int = 0

    @property
    def total_bytes(self) -> int:
        return self.block_bytes + self.embed_bytes + self.head_bytes


def model_from_config(config: dict, name: str, weight_dtype: WeightDtype = "bf16") -> ClusterModel:
    """Weights of a Llama-layout decoder (MoE experts included) at ``weight_dtype``; embeddings and
    the head stay 16-bit, as quantised checkpoints keep them."""
    dims = dims_from_config(config)
    cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    h, q, kv = dims.hidden_size, dims.n_head * dims.head_dim, dims.n_kv_head * dims.head_dim
    attn = (q + 2 * kv) * h + q * h
    experts = _int(cfg, ("num_local_experts", "num_experts", "n_routed_experts"))
    if experts:
        moe_ff = _int(cfg, ("moe_intermediate_size",)) or dims.intermediate_size
        shared_ff = _int(cfg, ("shared_expert_intermediate_size",)) or (
            (_int(cfg, ("n_shared_experts",)) or 0) * moe_ff)
        routed = _int(cfg, ("num_experts_per_tok", "num_experts_per_token")) or 2
        mlp, active_mlp = (experts * moe_ff + shared_ff) * 3 * h, (routed * moe_ff + shared_ff) * 3 * h
    else:
        mlp = active_mlp = 3 * dims.intermediate_size * h
    per = WEIGHT_BYTES[weight_dtype]
    embed = dims.vocab_size * h * 2
    return ClusterModel(name=name, dims=dims, block_bytes=int(dims.n_layer * (attn + mlp) * per),
                        embed_bytes=embed, head_bytes=0 if dims.tie_word_embeddings else embed,
                        active_block_bytes=int(dims.n_layer * (attn + active_mlp) * per),
                        weight_dtype=weight_dtype, experts=experts or 0)


def _int(cfg: dict, keys: tuple[str, ...]) -> Optional[int]:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# -- vLLM -------------------------------------------------------------------------------------
def kv_heads_per_gpu(n_kv_head: int, tp: int) -> int:
    """vLLM's ModelConfig.get_num_kv_heads: KV heads split over TP ranks, replicated when fewer."""
    return max(1, n_kv_head // tp)


def page_bytes(dims: ModelDims, tp: int, kv_bytes: int = 2, block_size: int = BLOCK_SIZE) -> int:
    """One block of one layer on one GPU (AttentionSpec.page_size_bytes)."""
    return block_size * kv_heads_per_gpu(dims.n_kv_head, tp) * 2 * dims.head_dim * kv_bytes


def gpu_blocks(kv_budget_bytes: int, page: int, layers_on_gpu: int) -> int:
    """kv_cache_utils.get_num_blocks: int(available // page_size // num_layers), not below 0."""
    return max(int(kv_budget_bytes // page // layers_on_gpu), 0)


def max_concurrency(blocks: int, max_model_len: int, block_size: int = BLOCK_SIZE) -> float:
    """What vLLM logs as 'Maximum concurrency for N tokens per request'."""
    return blocks * block_size / max_model_len


def activation_bytes(dims: ModelDims, tp: int, batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
                     max_num_seqs: int = MAX_NUM_SEQS) -> int:
    """vLLM's profiling run: one batch of ``batched_tokens`` through a layer (hidden states, qkv and
    the gate/up projection, split over TP) plus the sampler's fp32 logits for ``max_num_seqs`` rows."""
    per_token = 4 * dims.hidden_size + (dims.n_head + 2 * dims.n_kv_head) * dims.head_dim // tp \
        + 2 * dims.intermediate_size // tp
    return batched_tokens * per_token * 2 + max_num_seqs * dims.vocab_size * 4


@dataclass(frozen=True)
class VllmLayout:
    tp: int
    pp: int
    max_model_len: int
    weights_per_gpu: int
    activations_per_gpu: int
    kv_budget_per_gpu: int
    blocks: int
    kv_tokens: int
    concurrency: float
    decode_tokens_per_s: float
    fits: bool
    reasons: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def kv_per_gpu(self) -> int:
        return max(self.kv_budget_per_gpu, 0)


def vllm_layout(model: ClusterModel, cluster: ClusterProfile, tp: int, pp: int, max_model_len: int,
                utilization: float = DEFAULT_UTILIZATION, kv_dtype: KvDtype = "auto",
                batched_tokens: int = MAX_NUM_BATCHED_TOKENS) -> VllmLayout:
    dims = model.dims
    reasons: list[str] = []
    if dims.n_head % tp:
        reasons.append(f"{dims.n_head} attention heads do not divide by tensor-parallel size {tp}")
    if tp * pp > cluster.total_gpus:
        reasons.append(f"{tp * pp} GPUs asked, the cluster has {cluster.total_gpus}")
    if pp > dims.n_layer:
        reasons.append(f"more pipeline stages ({pp}) than layers ({dims.n_layer})")
    layers = math.ceil(dims.n_layer / pp)
    # The biggest stage: its share of the blocks, plus the embedding (first stage) and the head
    # (last stage); with one stage both. Embedding and head are vocab-parallel over TP.
    ends = model.embed_bytes + model.head_bytes if pp == 1 else max(model.embed_bytes, model.head_bytes)
    weights = int((model.block_bytes / dims.n_layer * layers + ends) / tp)
    activations = activation_bytes(dims, tp, min(batched_tokens, max(max_model_len, 2048)))
    budget = int(cluster.vram_gib * GIB * utilization) - weights - activations - GRAPH_AND_RUNTIME_BYTES
    kv_bytes = 1 if kv_dtype == "fp8" else 2
    page = page_bytes(dims, tp, kv_bytes)
    blocks = gpu_blocks(budget, page, layers) if budget > 0 else 0
    tokens = blocks * BLOCK_SIZE
    if budget <= 0:
        reasons.append(f"the weights ({weights / GIB:.1f} GiB per GPU) and runtime leave no room for a KV cache "
                       f"under gpu_memory_utilization {utilization}")
    elif tokens < max_model_len:
        reasons.append(f"the KV cache holds {tokens:,} tokens, less than one {max_model_len:,}-token sequence")
    speed = decode_speed(model, cluster, tp, pp, max_model_len // 2, kv_bytes)
    return VllmLayout(tp, pp, max_model_len, weights, activations, budget, blocks, tokens,
                      max_concurrency(blocks, max_model_len), speed, not reasons, tuple(reasons))


def decode_speed(model: ClusterModel, cluster: ClusterProfile, tp: int, pp: int, context: int,
                 kv_bytes: int = 2) -> float:
    """One stream's tokens/s, bandwidth-bound: each stage reads its share of the active weights and
    of the KV cache, stages run one after another, and every layer pays two all-reduces under TP."""
    dims = model.dims
    per_gpu = (model.active_block_bytes + model.embed_bytes / 64 + model.head_bytes) / (tp * pp)
    kv = 2 * dims.n_layer * kv_heads_per_gpu(dims.n_kv_head, tp) * dims.head_dim * kv_bytes * context / pp
    step = pp * (per_gpu + kv) / (cluster.bandwidth_gb_s * 1e9 * DECODE_EFFICIENCY)
    if tp > 1:
        link_us = 8 if cluster.intra_node == "nvlink" else 25
        across_nodes = tp > cluster.gpus_per_node
        step += 2 * dims.n_layer * (link_us * (4 if across_nodes else 1)) * 1e-6
    if pp > 1:
        hop_s = dims.hidden_size * 2 / ((cluster.inter_node_gb_s or cluster.intra_node_gb_s) * 1e9) + 20e-6
        step += (pp - 1) * hop_s
    return 1.0 / step


def candidate_sizes(model: ClusterModel, cluster: ClusterProfile) -> list[tuple[int, int]]:
    """(tp, pp) pairs as vLLM's distributed-serving guide lays them out: TP (a power of two dividing
    the heads) inside a node; PP across nodes, with TP = the GPUs of a node; PP inside one node only
    where its GPUs lack NVLink. TP across nodes is listed too (it works over a fast network)."""
    tps = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= cluster.total_gpus and model.dims.n_head % t == 0]
    pairs = []
    for tp in tps:
        pairs.append((tp, 1))
        if tp == cluster.gpus_per_node:
            pairs += [(tp, pp) for pp in range(2, cluster.nodes + 1)]
        elif cluster.nodes == 1 and cluster.intra_node == "pcie" and tp < cluster.gpus_per_node:
            pairs += [(tp, pp) for pp in range(2, cluster.gpus_per_node // tp + 1)]
    return pairs


@dataclass(frozen=True)
class VllmPlan:
    chosen: Optional[VllmLayout]
    candidates: tuple[VllmLayout, ...]
    command: str
    notes: tuple[str, ...] = field(default=())


def plan_vllm(model: ClusterModel, cluster: ClusterProfile, max_model_len: Optional[int] = None,
              utilization: float = DEFAULT_UTILIZATION, kv_dtype: KvDtype = "auto",
              goal: Literal["fewest_gpus", "most_users"] = "fewest_gpus", repo: str = "") -> VllmPlan:
    """Every valid layout, and the one to use: the fewest GPUs that hold the model and one full
    sequence ("fewest_gpus"), or vLLM's docs' rule for the whole cluster, TP = GPUs per node and
    PP = nodes ("most_users"), falling back to the most concurrent sequences when that rule does not fit."""
    length = max_model_len or model.dims.max_position_embeddings
    layouts = tuple(vllm_layout(model, cluster, tp, pp, length, utilization, kv_dtype)
                    for tp, pp in candidate_sizes(model, cluster))
    fitting = [layout for layout in layouts if layout.fits]
    notes: list[str] = []
    chosen = None
    if fitting:
        if goal == "most_users":
            rule = [f for f in fitting if f.tp == min(cluster.gpus_per_node, max(f.tp for f in fitting))
                    and f.pp == cluster.nodes]
            chosen = rule[0] if rule else max(fitting, key=lambda f: (f.concurrency, f.decode_tokens_per_s))
        else:
            chosen = min(fitting, key=lambda f: (f.gpus, f.pp, -f.decode_tokens_per_s))
    else:
        best = max(layouts, key=lambda f: f.kv_tokens, default=None)
        if best is not None and best.kv_tokens > 0:
            notes.append(f"Nothing fits {length:,} tokens; at most {best.kv_tokens:,} fit a sequence: try "
                         f"--max-model-len {best.kv_tokens // 1024 * 1024 or best.kv_tokens}, a fp8 KV cache or "
                         "a quantised checkpoint.")
        else:
            notes.append("The weights do not fit this cluster: use a quantised checkpoint (fp8, int4) or more GPUs.")
    if chosen is not None and chosen.pp > 1 and cluster.nodes > 1:
        notes.append("Several nodes: start a Ray cluster on them first (ray start --head / ray start --address), "
                     "then run the command on the head node.")
    if chosen is not None and chosen.tp > 1 and cluster.intra_node == "pcie":
        notes.append("GPUs on PCIe only: tensor parallelism pays an all-reduce per layer over PCIe; pipeline "
                     "parallelism may serve many users better.")
    return VllmPlan(chosen, layouts, vllm_command(repo or model.name, chosen, utilization, kv_dtype, cluster)
                    if chosen else "", tuple(notes))


def vllm_command(repo: str, layout: VllmLayout, utilization: float, kv_dtype: KvDtype,
                 cluster: ClusterProfile) -> str:
    parts = [f"vllm serve {repo}", f"--tensor-parallel-size {layout.tp}"]
    if layout.pp > 1:
        parts.append(f"--pipeline-parallel-size {layout.pp}")
    parts += [f"--max-model-len {layout.max_model_len}", f"--gpu-memory-utilization {utilization:g}"]
    if kv_dtype == "fp8":
        parts.append("--kv-cache-dtype fp8")
    parts.append(f"--max-num-seqs {max(1, min(MAX_NUM_SEQS, int(layout.kv_tokens // 1024) or 1))}")
    if layout.gpus > cluster.gpus_per_node:
        parts.append("--distributed-executor-backend ray")
    return " \\\n  ".join(parts)


# -- llama.cpp llama-server on one box ------------------------------------------------------------
@dataclass(frozen=True)
class LlamaServerPlan:
    quant: str
    gpus: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_budget_bytes: int
    parallel: int
    ctx_per_slot: int
    total_ctx: int
    decode_tokens_per_s: float
    fits: bool
    command: str
    reasons: tuple[str, ...] = ()


def plan_llama_server(model: ClusterModel, cluster: ClusterProfile, quant: str = "Q4_K_M",
                      ctx_per_slot: int = 8192, kv_type: Literal["f16", "q8_0"] = "q8_0",
                      reserve_gib_per_gpu: float = 1.0, gguf: str = "MODEL.gguf") -> LlamaServerPlan:
    """llama-server on one node, layers split over its GPUs: the KV cache left after the weights is
    shared by ``--parallel`` slots of ``ctx_per_slot`` tokens each (llama.cpp divides -c among them)."""
    dims = model.dims
    params = (model.block_bytes / WEIGHT_BYTES[model.weight_dtype]) + (model.embed_bytes + model.head_bytes) / 2
    weights = int(params * GGUF_BITS[quant] / 8)
    gpus = cluster.gpus_per_node
    kv_elem = 2 if kv_type == "f16" else 34 / 32  # q8_0: 34 bytes per 32 values
    per_token = int(dims.kv_elements_per_token * kv_elem)
    budget = int(gpus * (cluster.vram_gib - reserve_gib_per_gpu) * GIB) - weights
    parallel = max(budget // (per_token * ctx_per_slot), 0) if budget > 0 else 0
    reasons = []
    if budget <= 0:
        reasons.append(f"{quant} weights ({weights / GIB:.1f} GiB) do not fit {gpus} x {cluster.vram_gib:g} GiB")
    elif parallel == 0:
        reasons.append(f"the KV cache left ({budget / GIB:.1f} GiB) holds less than one {ctx_per_slot:,}-token slot")
    active = weights * model.active_block_bytes / max(model.block_bytes, 1)
    speed = cluster.bandwidth_gb_s * 1e9 * DECODE_EFFICIENCY / active  # layers run one GPU after another
    total = parallel * ctx_per_slot
    cache = "" if kv_type == "f16" else f" --cache-type-k {kv_type} --cache-type-v {kv_type}"
    command = (f"llama-server -m {gguf} -ngl 999 --split-mode layer -fa on -c {total} --parallel {parallel}{cache}"
               if parallel else "")
    return LlamaServerPlan(quant, gpus, weights, per_token, budget, int(parallel), ctx_per_slot, total, speed,
                           not reasons, command, tuple(reasons))


def parse_config(config: object) -> dict:
    if not isinstance(config, dict):
        raise ConfigError("config.json is not a JSON object")
    return config
