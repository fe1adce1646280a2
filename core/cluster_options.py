"""The options of a cluster deployment plan: one declaration drives ``app.py plan --cluster``'s flags,
the Models tab's cluster panel and their validation."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from core.cluster_plan import DEFAULT_UTILIZATION, GGUF_BITS, KvDtype, WeightDtype
from core.options import _Options

GgufQuant = Literal["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ2_XS"]
MAX_LEN = 1 << 24


class ClusterPlanOptions(_Options):
    max_model_len: Optional[int] = Field(
        None, ge=128, le=MAX_LEN, title="Max model length (tokens)",
        description="vLLM's --max-model-len. Empty = the model's trained context.",
        json_schema_extra={"cli": "--ctx", "step": 128, "empty": "trained",
                           "suggest": [8192, 32768, 131072]},
    )
    weights: WeightDtype = Field(
        "bf16", title="Checkpoint weights",
        description="The checkpoint's weight type (int4 = AWQ/GPTQ, fp8/int8 = W8A8).",
        json_schema_extra={"cli": "--weights"},
    )
    kv_dtype: KvDtype = Field(
        "auto", title="KV cache dtype (vLLM)", description="auto = the model's dtype; fp8 halves the KV cache.",
        json_schema_extra={"cli": "--kv"},
    )
    gpu_memory_utilization: float = Field(
        DEFAULT_UTILIZATION, ge=0.1, le=1.0, title="GPU memory utilization",
        description="vLLM's --gpu-memory-utilization: the share of each GPU vLLM may use.",
        json_schema_extra={"cli": "--gpu-memory-utilization", "step": 0.01},
    )
    goal: Literal["fewest_gpus", "most_users"] = Field(
        "fewest_gpus", title="Goal",
        description="fewest_gpus: the smallest layout that holds one full sequence; most_users: the layout "
                    "with the most concurrent sequences.",
        json_schema_extra={"cli": "--goal"},
    )
    gguf_quant: GgufQuant = Field(
        "Q4_K_M", title="GGUF quantisation (llama-server)", description="For the llama-server plan on one node.",
        json_schema_extra={"cli": "--gguf-quant"},
    )
    slot_ctx: int = Field(
        8192, ge=128, le=MAX_LEN, title="Context per slot (llama-server)",
        description="llama-server's context for each --parallel slot.",
        json_schema_extra={"cli": "--slot-ctx", "step": 128},
    )


assert set(GgufQuant.__args__) == set(GGUF_BITS), "GgufQuant must list core.cluster_plan.GGUF_BITS"
