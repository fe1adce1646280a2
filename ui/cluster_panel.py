"""Models tab, the "cluster" machine kind: for the Hub repository picked above, the vLLM deployment a
cluster profile (profiles/clusters/) allows, with its ``vllm serve`` command, and llama-server on one
node. Only the repo's config.json is read; the plan is the one ``app.py plan --cluster`` prints
(``core.cluster_report``)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from core.cluster_options import ClusterPlanOptions
from core.cluster_report import plan_deployment, render
from core.hf_model_shape import ConfigError
from core.presets import REPO_ID
from services.cluster_models import ClusterInputError, cluster_names, load_cluster, read_hub_config
from ui.option_widgets import build_widgets, options_from_values
from ui.quiet_dropdown import Dropdown

OPTION_FIELDS = tuple(ClusterPlanOptions.model_fields)
LLAMA_SERVER_FIELDS = ("gguf_quant", "slot_ctx")
VLLM_FIELDS = tuple(n for n in OPTION_FIELDS if n not in LLAMA_SERVER_FIELDS)


def plan(hub: Any, cluster: Any, repo: Any, *option_values: Any) -> str:
    """The deployment text for ``repo`` (a Hub id only: never a local path) on the profile ``cluster``;
    ``option_values``: the panel's option widgets in ``OPTION_FIELDS`` order (none: the defaults)."""
    if not isinstance(cluster, str) or cluster not in cluster_names():
        raise gr.Error("Pick a cluster profile from the list.")
    opts = (options_from_values(ClusterPlanOptions, OPTION_FIELDS, option_values, "cluster plan options")
            if option_values else ClusterPlanOptions())
    if not isinstance(repo, str) or not REPO_ID.match(repo.strip()) or ".." in repo:
        raise gr.Error("Enter or open a Hub repository (owner/name) of a transformers model above.")
    try:
        config, name = read_hub_config(repo.strip(), hub)
        return render(plan_deployment(config, name, load_cluster(cluster), opts))
    except (ClusterInputError, ConfigError) as exc:
        raise gr.Error(f"Cannot plan {repo.strip()} on {cluster}: {exc}") from None


def build(hub: Any, repo: gr.Dropdown) -> None:
    gr.Markdown("### Plan for a cluster\nMachine kind **cluster**: how the repository above would run under "
                "vLLM (tensor x pipeline parallel) on a cluster profile from `profiles/clusters/`, and with "
                "llama-server on one of its nodes. Only its config.json is read.")
    with gr.Row(equal_height=True):
        cluster = Dropdown(cluster_names(), value=None, label="Cluster profile", elem_id="cluster-profile", scale=3)
        plan_btn = gr.Button("Plan on cluster", elem_id="cluster-plan-btn", scale=1)
    with gr.Accordion("Plan options", open=False, elem_id="cluster-options"):
        widgets = {}
        for group in VLLM_FIELDS, LLAMA_SERVER_FIELDS:  # two rows: seven side by side ran off the page
            with gr.Row():
                widgets |= build_widgets(ClusterPlanOptions, only=group, elem_prefix="cluster-")
    out = gr.Code(label="Deployment plan", language=None, interactive=False, elem_id="cluster-plan")

    def on_plan(cluster_name, repo_text, *values):
        return plan(hub, cluster_name, repo_text, *values)

    # .change, not .select: a pick with the keyboard fires no select (nothing else sets this dropdown)
    gr.on([plan_btn.click, cluster.change], on_plan, [cluster, repo, *(widgets[n] for n in OPTION_FIELDS)], out,
          api_name="plan_cluster", concurrency_limit=4, concurrency_id="hub")
