"""One cluster deployment plan, as ``app.py plan --cluster`` and the Models tab's "cluster" machine
kind both show it: the vLLM layouts (TP x PP) with the chosen one and its ``vllm serve`` command, and
``llama-server --parallel`` on one node. Pure: a config.json dict and a cluster profile in, text out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from core.cluster_options import ClusterPlanOptions
from core.cluster_plan import (GIB, ClusterProfile, LlamaServerPlan, VllmPlan, model_from_config, plan_llama_server,
                               plan_vllm)


@dataclass(frozen=True)
class Deployment:
    name: str
    cluster: ClusterProfile
    vllm: VllmPlan
    llama_server: LlamaServerPlan

    @property
    def fits(self) -> bool:
        return self.vllm.chosen is not None or self.llama_server.fits


def plan_deployment(config: dict, name: str, cluster: ClusterProfile,
                    opts: Optional[ClusterPlanOptions] = None) -> Deployment:
    """The deployment for ``opts`` (None: the defaults), as the CLI and the Models tab take them.
    ConfigError when config.json does not describe a model the planner knows."""
    opts = opts or ClusterPlanOptions()
    model = model_from_config(config, name, opts.weights)
    plan = plan_vllm(model, cluster, opts.max_model_len, opts.gpu_memory_utilization, opts.kv_dtype, opts.goal,
                     repo=name)
    return Deployment(name, cluster, plan, plan_llama_server(model, cluster, opts.gguf_quant, opts.slot_ctx))


def render(dep: Deployment) -> str:
    gib = lambda n: f"{n / GIB:.1f} GiB"  # noqa: E731
    plan, server, cluster = dep.vllm, dep.llama_server, dep.cluster
    lines = [f"{dep.name} on {cluster.name} ({cluster.nodes} x {cluster.gpus_per_node} x {cluster.vram_gib:g} GiB)",
             "", "vLLM layouts (TP x PP):"]
    for c in plan.candidates:
        if c.gpus > 2 * (plan.chosen.gpus if plan.chosen else cluster.total_gpus) and not c.fits:
            continue
        mark = "*" if c == plan.chosen else " "
        state = (f"weights {gib(c.weights_per_gpu)}/GPU, KV {gib(c.kv_per_gpu)}/GPU = {c.kv_tokens:,} tokens, "
                 f"{c.concurrency:.1f} x {c.max_model_len:,}-token sequences, ~{c.decode_tokens_per_s:.0f} tok/s/stream")
        lines.append(f" {mark} TP {c.tp:>2} x PP {c.pp}: " + (state if c.fits else "no: " + "; ".join(c.reasons)))
    lines += ["", plan.command or "(no vLLM layout fits)", *plan.notes, ""]
    lines.append(f"llama-server on one node ({server.gpus} GPUs, {server.quant}, {server.ctx_per_slot:,} tokens/slot): "
                 + (f"weights {gib(server.weights_bytes)}, {server.parallel} parallel slots, "
                    f"~{server.decode_tokens_per_s:.0f} tok/s/stream" if server.fits else "; ".join(server.reasons)))
    if server.command:
        lines.append(server.command)
    return "\n".join(lines)
