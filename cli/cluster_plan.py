"""``python app.py plan --cluster PROFILE MODEL``: a vLLM deployment (tensor/pipeline parallel sizes,
weights and KV cache per GPU, context and concurrent sequences, decode speed, the ``vllm serve``
command) and a ``llama-server --parallel`` one on a single node of the cluster.

    python app.py plan --cluster h100-2x8 meta-llama/Llama-3.1-70B-Instruct
    python app.py plan --cluster rtx4090-1x4 ./Qwen3-32B/config.json --ctx 16384 --weights int4 --json

MODEL is a Hub repo (only its config.json is read), a local config.json, or a folder holding one.
Exits 0 when a layout fits, 1 when none does, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from cli.args import OneLineParser, UsageError
from core.cluster_plan import (GGUF_BITS, GIB, WEIGHT_BYTES, LlamaServerPlan, VllmPlan, model_from_config,
                               plan_llama_server, plan_vllm)
from core.hf_model_shape import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="app.py plan --cluster", description="Plan a vLLM / llama-server deployment.")
    p.add_argument("model", help="Hub repo id, config.json, or a folder with config.json")
    p.add_argument("--cluster", required=True, help="a profile from profiles/clusters/ or a YAML file")
    p.add_argument("--ctx", type=int, help="max model length (default: the model's trained context)")
    p.add_argument("--weights", choices=sorted(WEIGHT_BYTES), default="bf16", help="checkpoint weight type")
    p.add_argument("--kv", choices=("auto", "fp8"), default="auto", help="vLLM KV cache dtype")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--goal", choices=("fewest_gpus", "most_users"), default="fewest_gpus")
    p.add_argument("--gguf-quant", choices=sorted(GGUF_BITS), default="Q4_K_M", help="for the llama-server plan")
    p.add_argument("--slot-ctx", type=int, default=8192, help="llama-server context per parallel slot")
    p.add_argument("--json", action="store_true")
    return p


def render(plan: VllmPlan, server: LlamaServerPlan, model_name: str, cluster) -> str:
    gib = lambda n: f"{n / GIB:.1f} GiB"  # noqa: E731
    lines = [f"{model_name} on {cluster.name} ({cluster.nodes} x {cluster.gpus_per_node} x {cluster.vram_gib:g} GiB)",
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


def run(argv: list[str]) -> int:
    from services.cluster_models import ClusterInputError, load_cluster, read_config

    args = build_parser().parse_args(argv)
    if args.ctx is not None and not 128 <= args.ctx <= 1 << 24:
        raise UsageError(f"--ctx must be 128..{1 << 24} (got {args.ctx})")
    if not 0.1 <= args.gpu_memory_utilization <= 1.0:
        raise UsageError("--gpu-memory-utilization must be 0.1..1.0")
    if not 128 <= args.slot_ctx <= 1 << 24:
        raise UsageError("--slot-ctx must be 128..16777216")
    try:
        cluster = load_cluster(args.cluster)
        config, name = read_config(args.model)
        model = model_from_config(config, name, args.weights)
    except (ClusterInputError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    plan = plan_vllm(model, cluster, args.ctx, args.gpu_memory_utilization, args.kv, args.goal, repo=name)
    server = plan_llama_server(model, cluster, args.gguf_quant, args.slot_ctx)
    if args.json:
        print(json.dumps({"model": name, "cluster": cluster.model_dump(), "vllm": asdict(plan),
                          "llama_server": asdict(server)}, indent=1, default=str))
    else:
        print(render(plan, server, name, cluster))
    return 0 if plan.chosen is not None or server.fits else 1
