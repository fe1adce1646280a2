"""The Resources tab's handlers and view, called directly (no browser), with a fake NVML."""
from __future__ import annotations

import csv
import dataclasses
import io
import time

import gradio as gr
import pandas as pd
import pynvml
import pytest

from backends.base import BufferSize, ModelInfo
from backends.manager import ModelManager
from core.resources import GenerationSample
from core.settings import AppSettings
from services.nvml_source import NvmlSource
from services.sampler import ResourceSampler
from services.system_source import SystemSource
from tests.fake_nvml import MIB, FakeNvml, gpu
from ui import build_app
from ui import resources_handlers as h
from ui.context import AppContext
from ui.resources_view import gauges_html, plot_data

WORKER = 4242
INFO = ModelInfo("Test-8B Q4_K_M", "/m.gguf", "llama_cpp", 4096, 8192, 32, -1, True, 2, "f16", True, "gguf", 1.0,
                 5 << 30, (BufferSize("CUDA0", "model", 4000.0), BufferSize("CUDA0", "KV", 512.0),
                           BufferSize("CUDA0", "compute", 300.0), BufferSize("CPU_Mapped", "model", 280.0)),
                 worker_pid=WORKER)


def make_ctx(nvml: FakeNvml, loaded: bool = True, generation=GenerationSample) -> tuple[AppContext, ResourceSampler]:
    manager = ModelManager()
    if loaded:
        manager._set(status="ready", info=INFO)
    procs = {WORKER: "python", 77: "<script>alert(1)</script>"}
    sampler = ResourceSampler(SystemSource(), NvmlSource(nvml, process_name=lambda pid: procs.get(pid, "")),
                              generation=generation, worker_pid=lambda: WORKER)
    ctx = AppContext(AppSettings(), manager, catalog=lambda: None, sampler_factory=lambda _ctx: sampler)
    return ctx, sampler


def outputs(values: tuple) -> dict:
    return dict(zip(h.PANEL_OUTPUTS, values))


def one_gpu(other_gib=12) -> FakeNvml:
    """A 16 GiB GPU: the worker holds 5.27 GiB and another program 12 GiB (more than the worker can share)."""
    return FakeNvml([gpu(used_mib=15700, total_mib=16384, compute=[(WORKER, 5400 * MIB), (77, other_gib << 30)])])


def test_plot_data_is_what_gradio_makes_from_a_dataframe(tmp_path):
    ctx, sampler = make_ctx(one_gpu())
    for _ in range(3):
        sampler.sample_once()
    plot = gr.LinePlot(x="seconds", y="value", color="series")
    for metric in ("vram", "gpu_util", "ram", "cpu", "tokens"):
        ours = plot_data(sampler.samples(), metric)
        frame = pd.DataFrame(ours["data"], columns=ours["columns"])
        assert ours == plot.postprocess(frame).model_dump(), metric
        assert ours["data"][-1][0] == 0.0 and all(-10 < row[0] <= 0 for row in ours["data"])
        assert plot.postprocess(ours) == ours  # Gradio passes our dict through untouched


def test_the_panel_shows_gpus_processes_placement_and_warnings():
    ctx, sampler = make_ctx(one_gpu())
    sampler.sample_once()
    panel = outputs(h.panel(ctx, sampler, None))
    assert panel["seen"].seq == 1 and "Sample 1 at" in panel["status"]
    assert "GPU0 · NVIDIA H100" in panel["gauges"] and "FitChat&#x27;s model worker: 5.27 GiB" in panel["gauges"]
    assert "&lt;script&gt;" in panel["gauges"] and "<script>" not in panel["gauges"]
    assert "**GPU0**: 33/33 layers — weights 3.91 GiB, KV 512 MiB, compute 300 MiB" in panel["placement"]
    assert "no prediction yet" in panel["placement"]
    assert "Other processes hold 12.00 GiB of GPU0: scriptalert1/script (pid 77, 12.00 GiB)" in panel["warning"]
    for metric in ("vram", "gpu_util", "ram", "cpu", "tokens"):
        assert panel[metric]["visible"] is True and panel[metric]["value"]["data"], metric
    # Nothing new since: the browser is sent nothing.
    assert all(v == gr.skip() for v in h.panel(ctx, sampler, panel["seen"]))


def test_gauges_follow_every_sample_plots_every_few_and_unchanged_text_is_not_resent():
    ctx, sampler = make_ctx(one_gpu())
    sampler.sample_once()
    seen = outputs(h.panel(ctx, sampler, None))["seen"]
    for n in range(2, h.PLOT_EVERY + 2):
        sampler.sample_once()
        panel = outputs(h.panel(ctx, sampler, seen))
        seen = panel["seen"]
        assert seen.seq == n and f"Sample {n} at" in panel["status"] and "GPU0" in panel["gauges"]
        assert panel["placement"] == gr.skip() and panel["warning"] == gr.skip()  # the same text as before
        redrawn = n - 1 >= h.PLOT_EVERY
        assert all((panel[m] != gr.skip()) == redrawn for m in ("vram", "gpu_util", "ram", "cpu", "tokens")), n
    assert seen.plotted == h.PLOT_EVERY + 1
    ctx.manager._set(status="empty", info=None)  # the model went away: the card changes at once
    sampler.sample_once()
    assert "No model loaded" in outputs(h.panel(ctx, sampler, seen))["placement"]


def test_the_panel_refreshes_every_few_seconds_while_the_cpu_generates():
    state = {"gen": GenerationSample()}
    ctx, sampler = make_ctx(one_gpu(), generation=lambda: state["gen"])
    sampler.sample_once()
    idle = outputs(h.panel(ctx, sampler, None))
    assert idle["timer"] == gr.skip() and idle["seen"].refresh_s == h.REFRESH_S
    state["gen"] = GenerationSample(True, 50.0, 0.1, 100, 4096)
    sampler.sample_once()
    on_gpu = outputs(h.panel(ctx, sampler, idle["seen"]))
    assert on_gpu["timer"] == gr.skip()  # every layer on the GPU: the CPU is not the bottleneck
    ctx.manager._set(info=dataclasses.replace(INFO, n_gpu_layers=20))  # a partial offload decodes on the CPU too
    sampler.sample_once()
    slow = outputs(h.panel(ctx, sampler, on_gpu["seen"]))
    assert slow["timer"] == {"__type__": "update", "value": h.CPU_DECODE_REFRESH_S}
    assert "shown every 5 s while the model generates on the CPU, plots every 30 s" in slow["status"]
    # The plots, the slowest part for a browser to redraw, wait CPU_DECODE_PLOT_EVERY samples, not PLOT_EVERY.
    seen, plotted = slow["seen"], slow["seen"].plotted
    redraws = []
    for _ in range(h.CPU_DECODE_PLOT_EVERY):
        sampler.sample_once()
        out = outputs(h.panel(ctx, sampler, seen))
        seen = out["seen"]
        redraws.append(out["ram"] != gr.skip())
    assert redraws.index(True) == plotted + h.CPU_DECODE_PLOT_EVERY - slow["seen"].seq - 1 and sum(redraws) == 1
    h.tick(ctx, sampler, "browser", slow["seen"])  # nothing new: all skipped, but the lease fits the slow timer
    assert sampler._viewers["browser"] - time.monotonic() > 3 * h.CPU_DECODE_REFRESH_S
    state["gen"] = GenerationSample(False, 50.0, 0.1, 300, 4096)
    sampler.sample_once()
    done = outputs(h.panel(ctx, sampler, slow["seen"]))
    assert done["timer"] == {"__type__": "update", "value": h.REFRESH_S} and "shown every" not in done["status"]
    sampler.close()


def test_cpu_only_hides_the_gpu_plots_and_says_why():
    ctx, sampler = make_ctx(FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), loaded=False)
    first = outputs(h.panel(ctx, sampler, None))  # before any sample: no plot is touched
    assert first["status"] == "Starting the sampler…" and first["vram"] == gr.skip()
    sampler.sample_once()
    panel = outputs(h.panel(ctx, sampler, None))
    assert panel["vram"] == {"__type__": "update", "visible": False}
    assert panel["gpu_util"] == {"__type__": "update", "visible": False}
    assert panel["ram"]["visible"] is True
    assert "CPU only: no NVIDIA driver answered (NVML: NVML Shared Library Not Found)" in panel["status"]
    assert "NVML Shared Library Not Found" in panel["gauges"] and panel["warning"] == ""
    assert "No model loaded" in panel["placement"]


def test_the_placement_follows_the_manager_state():
    ctx, sampler = make_ctx(one_gpu(), loaded=False)
    sampler.sample_once()
    from backends.base import LoadSpec

    ctx.manager._set(status="loading", spec=LoadSpec("/m.gguf", display_name="Big model"))
    assert "Loading Big model" in h.placement_text(ctx, sampler.samples()[-1])
    ctx.manager._set(status="crashed", spec=None, error="killed by SIGKILL")
    assert "killed by SIGKILL" in h.placement_text(ctx, sampler.samples()[-1])


def test_opening_and_leaving_the_tab_start_and_stop_this_browsers_sampling():
    ctx, sampler = make_ctx(one_gpu())
    opened = h.open_tab(ctx, sampler, "session-a")
    timer = opened[-1]
    assert isinstance(timer, gr.Timer) and timer.active is True
    assert sampler.viewers() == 1
    deadline = time.monotonic() + 5
    while sampler.ticks < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sampler.ticks >= 2
    assert h.close_tab(sampler, "session-a").active is False and sampler.viewers() == 0
    sampler.close()


def test_csv_export_refuses_an_empty_history_then_writes_the_file(tmp_path):
    ctx, sampler = make_ctx(one_gpu())
    with pytest.raises(gr.Error, match="Nothing to export yet"):
        h.export_csv(sampler, tmp_path)
    for _ in range(3):
        sampler.sample_once()
    path = h.export_csv(sampler, tmp_path)
    rows = list(csv.DictReader(io.StringIO(open(path, encoding="utf-8").read())))
    assert [r["seq"] for r in rows] == ["1", "2", "3"] and rows[0]["gpu0_worker_vram_bytes"] == str(5400 * MIB)
    for _ in range(h.EXPORTS_KEPT + 3):
        h.export_csv(sampler, tmp_path)
    assert len(list(tmp_path.glob("*.csv"))) <= h.EXPORTS_KEPT


def test_gauges_before_the_first_sample():
    assert "Waiting for the first sample" in gauges_html(None)


def test_the_app_wires_the_timer_to_the_tabs(tmp_path):
    from cli.launch import make_context

    ctx = make_context(AppSettings(data_dir=tmp_path, load_default_model=False))
    sampler = ResourceSampler(SystemSource(), None)
    ctx.sampler_factory = lambda _ctx: sampler
    app = build_app(ctx)
    config = app.get_config_file()
    ids = {c["id"]: c for c in config["components"]}
    timers = [i for i, c in ids.items() if c["type"] == "timer" and c["props"].get("active") is False]
    tab_ids = {c["props"].get("elem_id"): i for i, c in ids.items() if c["type"] == "tabitem"}
    selects = {tuple(t) for d in config["dependencies"] for t in d["targets"] if t[1] == "select"}
    for name in ("tab-chat", "tab-models", "tab-presets", "tab-resources"):
        assert (tab_ids[name], "select") in selects, name
    resource_timer = [d for d in config["dependencies"]
                      if [tab_ids["tab-resources"], "select"] in [list(t) for t in d["targets"]]]
    assert any(set(timers) & set(d["outputs"]) for d in resource_timer)
    assert any(t[1] == "unload" for d in config["dependencies"] for t in d["targets"])
    sampler.close()
