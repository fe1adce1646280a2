"""The Resources tab showing a session recorded on the GPU machine, for its screenshot in docs/.

    .venv/bin/python bench/resources_replay.py bench/results/gpu/timeline.json \\
        --out docs/screenshot-resources-gpu.png

The GPU machine has neither Gradio nor a browser, so ``bench/gpu_nvml_sampler.py --timeline`` records
there what the sampler read from NVML and psutil each second (idle, the load, replies) together with
the loaded model and the planner's prediction. This script starts the real app here with its sampler
reading that recording instead of this machine (recorded sources in place of the NVML and psutil
adapters), opens the Resources tab in Debian's Chromium and saves a full-page screenshot. Every
figure in the picture was measured on the GPU machine; only the drawing happens here.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec, ModelInfo  # noqa: E402
from backends.manager import ModelManager  # noqa: E402
from core.model_catalog import ModelCatalog  # noqa: E402
from core.options import LoadOptions  # noqa: E402
from core.plan import MemoryBreakdown, Plan  # noqa: E402
from core.resources import GenerationSample, GpuSample, ResourceSample, SystemSample, VramProcess  # noqa: E402
from core.settings import AppSettings  # noqa: E402
from services.sampler import ResourceSampler  # noqa: E402


def sample_from_dict(d: dict) -> ResourceSample:
    system = SystemSample(**{**d["system"], "cpu_percent": tuple(d["system"]["cpu_percent"])}) if d["system"] else None
    gpus = tuple(GpuSample(**{**g, "processes": None if g["processes"] is None else
                              tuple(VramProcess(**p) for p in g["processes"])}) for g in d["gpus"])
    return ResourceSample(d["seq"], d["time"], system, gpus, d["gpu_note"], GenerationSample(**d["generation"]),
                          d["worker_pid"], tuple(d["errors"]), d["cost_ms"])


def plan_from_dict(d: Optional[dict]) -> Optional[Plan]:
    if d is None:
        return None
    fields = {k: v for k, v in d.items() if k not in ("vram_bytes", "ram_bytes", "fit_label")}
    return Plan(**{**fields, "gpu": MemoryBreakdown(**d["gpu"]), "cpu": MemoryBreakdown(**d["cpu"]),
                   "reasons": tuple(d["reasons"])})


class Recording:
    """Plays the recorded samples back in order, one per sampler tick; the last one repeats once they run out.
    The sampler asks for the worker's PID first on every tick, so that call moves to the next sample."""

    def __init__(self, samples: list[ResourceSample]) -> None:
        self.samples, self.i = samples, -1

    @property
    def current(self) -> ResourceSample:
        return self.samples[max(self.i, 0)]

    def worker_pid(self) -> Optional[int]:
        self.i = min(self.i + 1, len(self.samples) - 1)
        return self.current.worker_pid


class RecordedSystem:
    """In place of services.system_source.SystemSource."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def sample(self, worker_pid) -> Optional[SystemSample]:
        return self.recording.current.system


class RecordedGpus:
    """In place of services.nvml_source.NvmlSource."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def open(self) -> str:
        return self.recording.samples[0].gpu_note

    def sample(self, worker_pid, app_pid):
        return self.recording.current.gpus, []

    def close(self) -> None:
        pass


class RecordedSampler(ResourceSampler):
    """The app's sampler over a recording; its status reports the CPU cost measured on the GPU machine."""

    def __init__(self, recording: Recording, app_pid: int) -> None:
        super().__init__(RecordedSystem(recording), RecordedGpus(recording),
                         generation=lambda: recording.current.generation, worker_pid=recording.worker_pid,
                         wall=lambda: recording.current.time, app_pid=app_pid)
        self.recording = recording

    def status(self) -> dict:
        costs = [s.cost_ms for s in self.recording.samples if s.cost_ms is not None]
        return {**super().status(), "cpu_ms_per_tick": sum(costs) / len(costs) if costs else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recording", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot-resources-gpu.png")
    ap.add_argument("--port", type=int, default=7991)
    a = ap.parse_args()
    data = json.loads(a.recording.read_text())
    samples = [sample_from_dict(s) for s in data["samples"]]
    info = ModelInfo.from_dict(data["info"])
    recording = Recording(samples)
    app_pid = next((p.pid for s in samples for g in s.gpus for p in g.processes or () if p.role == "app"), 1)

    import gradio as gr  # noqa: F401  (after the data: a bad recording fails fast)
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
    from ui import CSS, build_app
    from ui.context import AppContext

    data_dir = Path(tempfile.mkdtemp(prefix="fitchat-replay-"))
    settings = AppSettings(port=a.port, data_dir=data_dir, load_default_model=False)
    manager = ModelManager()
    options = LoadOptions(n_ctx=info.n_ctx, n_gpu_layers=info.n_gpu_layers, kv_type=info.kv_type)
    manager._set(status="ready", spec=LoadSpec(info.path, options, display_name=info.name), info=info,
                 plan=plan_from_dict(data["plan"]))
    sampler = RecordedSampler(recording, app_pid)
    for _ in samples:
        sampler.sample_once()
    ctx = AppContext(settings=settings, manager=manager, catalog=lambda: ModelCatalog(()),
                     sampler_factory=lambda _ctx: sampler, loaded_plan=lambda: manager.state().plan)
    app = build_app(ctx)
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=a.port, prevent_thread_lock=True, quiet=True, css=CSS,
               footer_links=[])
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            page.goto(f"http://127.0.0.1:{a.port}/")
            page.wait_for_selector("#tab-resources-button", timeout=20000)
            page.click("#tab-resources-button")
            page.wait_for_selector("#resources-ram", timeout=20000)
            page.wait_for_function("() => document.querySelectorAll('#resources-plot-ram canvas, "
                                   "#resources-plot-ram svg').length > 0", timeout=20000)
            time.sleep(2.0)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(a.out), full_page=True)
            print(page.inner_text("#resources-placement"))
            browser.close()
    finally:
        app.close()
    print(f"saved {a.out} ({len(samples)} samples recorded on {samples[0].gpus[0].name if samples[0].gpus else 'CPU'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
