"""Models tab handlers without a browser, against the local Hub: search, the fit of every file for a
given machine before downloading, downloads (and inputs a client sends past the dropdowns), the
library (load with the planned settings, show path, delete with confirmation), offline."""
from __future__ import annotations

import gradio as gr
import pytest

from backends.manager import ModelManager
from core.settings import AppSettings
from services.downloads import Downloader
from services.hub import HubClient
from services.local_models import build_catalog
from services.paths import EMBEDDED_NAME
from ui import library_handlers as lib
from ui import models_handlers as h
from ui.context import AppContext
from tests.hub_repos import EVIL, LLAMA8B, PICKLE, REMOTE_CODE, SAFETENSORS, TINY, machines

GPU, CPU = machines()
TINY_NAME = "test-org--Tiny-GGUF/tiny-Q4_0.gguf"
Q8_NAME = "test-org--Tiny-GGUF/tiny-Q8_0.gguf"  # llama.cpp loads it (synth_gguf's Q4_0 head has a bad shape)


@pytest.fixture
def ctx(tmp_path):
    settings = AppSettings(data_dir=tmp_path)
    manager = ModelManager()
    machine = {"hw": GPU}
    context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir),
                         hardware=lambda: machine["hw"])
    context.machine = machine  # tests switch the described machine
    yield context
    manager.close()


@pytest.fixture
def svc(ctx, fake_hub):
    fake_hub.reset_counters()
    hub = HubClient(endpoint=fake_hub.url, token=False)
    return h.ModelsServices(hub, Downloader(ctx.settings.models_dir, hub))


def last(generator):
    out = None
    for out in generator:
        pass
    return out


def test_search_lists_repos_and_checks_its_inputs(svc):
    table, dropdown = h.search(svc, "split", "GGUF (llama.cpp)")
    assert dropdown.choices == [("test-org/Split-GGUF", "test-org/Split-GGUF")] and "Llama-8B" not in table
    table, dropdown = h.search(svc, "", "GGUF (llama.cpp)")
    assert dropdown.choices[0][0] == LLAMA8B and table.index("Llama-8B-GGUF") < table.index("Tiny-GGUF")
    assert "5,000" in table
    with pytest.raises(gr.Error, match="GGUF or safetensors"):
        h.search(svc, "x", "<script>")
    with pytest.raises(gr.Error, match="100 printable"):
        h.search(svc, "x" * 200, "GGUF (llama.cpp)")


def test_each_file_gets_a_fit_badge_for_the_machine_and_the_best_is_preselected(ctx, svc, fake_hub):
    outputs = list(h.open_repo(ctx, svc, LLAMA8B))
    assert "Reading headers… 3 left" in outputs[0][0]
    table, choice, summary, view = outputs[-1]
    rows = {r.key: r for r in view.rows}
    assert rows["Llama-8B-Q4_K_M"].plan.fit == "full_gpu" and rows["Llama-8B-F16"].plan.fit == "partial"
    assert rows["Llama-8B-Q4_K_M"].best_ctx == 131072 and rows["Llama-8B-Q4_K_M"].plan.tokens_per_s > 30
    assert choice.value == view.best == "Llama-8B-Q8_0" and len(choice.choices) == 3
    assert table.count('data-fit="full_gpu"') == 2 and "Partial 24 of 33 layers" in table and "★" in table
    assert "headers read" in summary and "mmproj" in summary
    assert sum(r.header_bytes for r in view.rows) <= 16 << 20  # of 30 GB of files
    ctx.machine["hw"] = CPU
    view = last(h.open_repo(ctx, svc, LLAMA8B))[3]
    assert [r.plan.fit for r in view.rows] == ["cpu_only", "cpu_only", "no_fit"]


def test_bad_repos_give_clear_errors_and_hostile_names_are_listed_as_refused(ctx, svc):
    for bad in ("../../etc", "a/b/c", None, "x" * 300):
        with pytest.raises(gr.Error, match="repository"):
            last(h.open_repo(ctx, svc, bad))
    with pytest.raises(gr.Error, match="not found on the Hub"):
        last(h.open_repo(ctx, svc, "test-org/Missing"))
    _, choice, summary, view = last(h.open_repo(ctx, svc, EVIL))
    assert [c[1] for c in choice.choices] == ["ok-F32"] and "Refused file names" in summary
    assert "&#x27;../../evil-Q4_0.gguf&#x27;" in summary or "../../evil-Q4_0.gguf" in summary


def test_transformers_repos_show_nf4_8bit_bf16_and_refuse_pickles_and_remote_code(ctx, svc):
    table, choice, summary, view = last(h.open_repo(ctx, svc, SAFETENSORS))
    assert [c[1] for c in choice.choices] == ["nf4", "int8", "bf16"] and view.kind == "transformers"
    assert table.count('data-fit="full_gpu"') == 3 and "≤" in table and "unquantised" in summary
    with pytest.raises(gr.Error, match="only pickle weights"):
        last(h.open_repo(ctx, svc, PICKLE))
    with pytest.raises(gr.Error, match="auto_map"):
        last(h.open_repo(ctx, svc, REMOTE_CODE))


def test_download_takes_files_only_from_the_opened_repo(ctx, svc):
    with pytest.raises(gr.Error, match="Open a repository first"):
        last(h.download(ctx, svc, None, "tiny-Q4_0", None))
    view = last(h.open_repo(ctx, svc, TINY))[3]
    for bad in ("../../etc/passwd", "tiny-Q4_0.gguf", None, 3, "Llama-8B-Q8_0"):
        with pytest.raises(gr.Error, match="Pick a file from the list"):
            last(h.download(ctx, svc, view, bad, None))
    assert not ctx.settings.models_dir.exists() or not list(ctx.settings.models_dir.rglob("*.gguf"))


def test_download_streams_progress_and_lands_in_the_library(ctx, svc):
    view = last(h.open_repo(ctx, svc, TINY))[3]
    outputs = list(h.download(ctx, svc, view, "tiny-Q4_0", None))
    progress, job, library, lib_choice = outputs[-1]
    assert "Installed tiny-Q4_0.gguf: every file verified" in progress and 'data-phase="done"' in progress
    assert TINY_NAME in library and lib_choice.value == TINY_NAME
    assert job.done and job.result is not None


def test_too_little_disk_space_is_reported_and_nothing_is_listed(ctx, svc):
    svc.downloader.free_space = lambda path: 1 << 20
    view = last(h.open_repo(ctx, svc, TINY))[3]
    progress, _, library, _ = last(h.download(ctx, svc, view, "tiny-Q4_0", None))
    assert "Not enough disk space" in progress and TINY_NAME not in library


def test_cancel_stops_a_download_and_says_the_part_is_kept(ctx, svc, fake_hub):
    view = last(h.open_repo(ctx, svc, TINY))[3]
    fake_hub.rate_mib_s = 50
    try:
        updates = h.download(ctx, svc, view, "tiny-Q4_0", None)
        _, job, *_ = next(updates)
        with pytest.raises(gr.Error, match="already running"):
            last(h.download(ctx, svc, view, "tiny-Q4_0", job))
        assert h.cancel(job).startswith("Cancelling")
        progress, *_ = last(updates)
    finally:
        fake_hub.rate_mib_s = 0.0
    assert "Cancelled" in progress and "resumes from there" in progress and 'data-phase="cancelled"' in progress
    assert h.cancel(job) == "No download is running." and h.cancel("forged") == "No download is running."


@pytest.mark.real_model
def test_library_lists_plans_loads_reveals_and_deletes(ctx, svc):
    ctx.machine["hw"] = CPU
    view = last(h.open_repo(ctx, svc, TINY))[3]
    last(h.download(ctx, svc, view, "tiny-Q8_0", None))
    table, dropdown = lib.refresh(ctx)
    assert EMBEDDED_NAME in dropdown.choices[0] and Q8_NAME in table and 'data-fit="cpu_only"' in table
    assert "never" in table and "test-org/Tiny-GGUF" in table
    for bad in ("../../etc/passwd", None, "/etc/passwd"):
        with pytest.raises(gr.Error):
            lib.load(ctx, bad)
    status = lib.load(ctx, Q8_NAME)
    assert status.startswith("**Ready**"), status
    spec = ctx.manager.state().spec
    assert spec.options.n_gpu_layers == 0 and spec.options.n_ctx == 4096  # the plan for this CPU machine
    assert "never" not in lib.refresh(ctx)[0].split(Q8_NAME)[1].split("</tr>")[0]
    assert lib.reveal(ctx, Q8_NAME) == str(ctx.settings.models_dir.resolve() / Q8_NAME)
    with pytest.raises(gr.Error, match="Press Delete"):
        lib.confirm_delete(ctx, Q8_NAME, None)
    with pytest.raises(gr.Error, match="not in the models folder"):
        lib.ask_delete(ctx, EMBEDDED_NAME)
    text, pending, _ = lib.ask_delete(ctx, Q8_NAME)
    assert "tiny-Q8_0.gguf" in text and pending == Q8_NAME
    with pytest.raises(gr.Error, match="unload it first"):
        lib.confirm_delete(ctx, Q8_NAME, pending)
    ctx.manager.unload()
    message, table, *_ = lib.confirm_delete(ctx, Q8_NAME, pending)
    assert message.startswith("Deleted") and Q8_NAME not in table
    assert not (ctx.settings.models_dir / "test-org--Tiny-GGUF").exists()


def test_the_library_works_offline(ctx, svc, monkeypatch):
    from huggingface_hub import constants

    view = last(h.open_repo(ctx, svc, TINY))[3]
    last(h.download(ctx, svc, view, "tiny-Q4_0", None))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(gr.Error, match="HF_HUB_OFFLINE"):
        h.search(svc, "tiny", "GGUF (llama.cpp)")
    table, _ = lib.refresh(ctx)
    assert TINY_NAME in table and 'data-fit="full_gpu"' in table


def test_a_downloaded_transformers_model_is_listed_with_its_best_quantisation(ctx, svc):
    _, choice, _, view = last(h.open_repo(ctx, svc, SAFETENSORS))
    progress, _, table, lib_choice = last(h.download(ctx, svc, view, choice.value, None))
    assert "every file verified" in progress and lib_choice.value == "test-org--Tiny-Safetensors"
    row = table.split('data-model="test-org--Tiny-Safetensors"')[1].split("</tr>")[0]
    assert "safetensors" in row and "bf16" in row and 'data-fit="full_gpu"' in row and "≤" in row  # all fit: bf16


def test_show_path_is_admin_only_in_the_handler(tmp_path):
    """Issue 13 (round 3): the handler itself refuses a non-admin with a clear message (not only the
    button's wiring), so no other caller of it can hand a guest the models folder's absolute path."""
    from types import SimpleNamespace
    from dataclasses import replace
    settings = replace(AppSettings(data_dir=tmp_path), auth=(("ann", "pw-ann-1"), ("bob", "pw-bob-1")),
                       admins=("ann",))
    manager = ModelManager()
    try:
        context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir),
                             hardware=lambda: GPU)
        name = EMBEDDED_NAME
        guest = SimpleNamespace(username="bob", headers={})
        with pytest.raises(gr.Error, match="Only an admin can see where models are stored; you are logged in as bob"):
            lib.reveal(context, name, guest)
        with pytest.raises(gr.Error, match="Only an admin"):
            lib.reveal(context, name, None)  # nobody logged in, with logins on
        admin = SimpleNamespace(username="ann", headers={})
        assert lib.reveal(context, name, admin).startswith("/")
    finally:
        manager.close()


def _cluster_options(**changes) -> list:
    """The cluster panel's option widgets as the browser sends them (defaults, then ``changes``)."""
    from core.cluster_options import ClusterPlanOptions
    from ui import cluster_panel
    from ui.option_widgets import widget_values

    values = dict(zip(cluster_panel.OPTION_FIELDS,
                      widget_values(ClusterPlanOptions, ClusterPlanOptions(), cluster_panel.OPTION_FIELDS)))
    return [changes.get(name, values[name]) for name in cluster_panel.OPTION_FIELDS]


def test_cluster_machine_kind_plans_a_hub_model_as_the_cli_does(svc, fake_hub):
    from core.cluster_options import ClusterPlanOptions
    from core.cluster_report import plan_deployment, render
    from services.cluster_models import load_cluster, read_hub_config
    from ui import cluster_panel

    text = cluster_panel.plan(svc.hub, "h100-1x8", SAFETENSORS, *_cluster_options())
    assert text.startswith(f"{SAFETENSORS} on 1 node x 8 H100") and " * TP  1 x PP 1" in text
    assert f"vllm serve {SAFETENSORS}" in text and "llama-server" in text and "tok/s/stream" in text
    assert [r.path for r in fake_hub.log if "/resolve/" in r.path and r.path.endswith(".safetensors")] == []
    # the same text as `app.py plan --cluster` for the same config.json
    config, _ = read_hub_config(SAFETENSORS, svc.hub)
    assert text == render(plan_deployment(config, SAFETENSORS, load_cluster("h100-1x8")))
    # every option the CLI has reaches the plan from the panel
    chosen = dict(max_model_len=4096, weights="int4", kv_dtype="fp8", gpu_memory_utilization=0.5, goal="most_users",
                  gguf_quant="Q8_0", slot_ctx=2048)
    shown = cluster_panel.plan(svc.hub, "h100-1x8", SAFETENSORS,
                               *_cluster_options(**{**chosen, "max_model_len": " 4096 "}))
    assert shown == render(plan_deployment(config, SAFETENSORS, load_cluster("h100-1x8"), ClusterPlanOptions(**chosen)))
    assert shown != text and "--max-model-len 4096" in shown and "--kv-cache-dtype fp8" in shown


@pytest.mark.parametrize("cluster, repo, options, why", [
    ("nope", SAFETENSORS, {}, "Pick a cluster profile"), (["h100-1x8"], SAFETENSORS, {}, "Pick a cluster"),
    ("h100-1x8", "../../etc", {}, "owner/name"), ("h100-1x8", SAFETENSORS, {"weights": "fp7"}, "Checkpoint weights"),
    ("h100-1x8", None, {}, "owner/name"), ("h100-1x8", TINY, {}, "has no config.json"),
    ("h100-1x8", "test-org/Missing", {}, "Cannot plan test-org/Missing"),
    ("h100-1x8", SAFETENSORS, {"max_model_len": "10"}, "Max model length \\(tokens\\) must be at least 128"),
    ("h100-1x8", SAFETENSORS, {"max_model_len": "lots"}, "whole number"),
    ("h100-1x8", SAFETENSORS, {"gpu_memory_utilization": 3}, "GPU memory utilization must be at most 1"),
    ("h100-1x8", SAFETENSORS, {"slot_ctx": float("nan")}, "Context per slot"),
])
def test_cluster_machine_kind_refuses_bad_input_with_a_message(svc, cluster, repo, options, why):
    from ui import cluster_panel

    with pytest.raises(gr.Error, match=why):
        cluster_panel.plan(svc.hub, cluster, repo, *_cluster_options(**options))
