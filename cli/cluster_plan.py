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
from core.cluster_plan import GGUF_BITS, WEIGHT_BYTES
from core.cluster_report import plan_deployment, render
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
        dep = plan_deployment(config, name, cluster, args.ctx, args.weights, args.kv, args.gpu_memory_utilization,
                              args.goal, args.gguf_quant, args.slot_ctx)
    except (ClusterInputError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({"model": name, "cluster": cluster.model_dump(), "vllm": asdict(dep.vllm),
                          "llama_server": asdict(dep.llama_server)}, indent=1, default=str))
    else:
        print(render(dep))
    return 0 if dep.fits else 1
