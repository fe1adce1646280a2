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

from cli.args import OneLineParser, UsageError, add_option_flags, options_from_args
from core.cluster_options import ClusterPlanOptions
from core.cluster_report import plan_deployment, render
from core.hf_model_shape import ConfigError


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    p = OneLineParser(prog="app.py plan --cluster", description="Plan a vLLM / llama-server deployment.")
    p.add_argument("model", help="Hub repo id, config.json, or a folder with config.json")
    p.add_argument("--cluster", required=True, help="a profile from profiles/clusters/ or a YAML file")
    names = add_option_flags(p, ClusterPlanOptions)
    p.add_argument("--json", action="store_true")
    return p, names


def run(argv: list[str]) -> int:
    from services.cluster_models import ClusterInputError, load_cluster, read_config

    parser, names = build_parser()
    args = parser.parse_args(argv)
    opts = options_from_args(ClusterPlanOptions, args, names)
    try:
        cluster = load_cluster(args.cluster)
        config, name = read_config(args.model)
        dep = plan_deployment(config, name, cluster, opts)
    except (ClusterInputError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({"model": name, "cluster": cluster.model_dump(), "vllm": asdict(dep.vllm),
                          "llama_server": asdict(dep.llama_server)}, indent=1, default=str))
    else:
        print(render(dep))
    return 0 if dep.fits else 1
