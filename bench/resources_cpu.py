"""Resources panel cost: the sampler's CPU per tick, the whole panel's CPU while open, and decode
tokens/s of a long reply with the Resources tab open versus closed.

    .venv/bin/python bench/resources_cpu.py [--runs 8] [--max-tokens 512] [--ticks 200]
        [--model PATH.gguf --n-gpu-layers -1] [--viewer browser|api] [--out FILE]

(a) Sampler: ``sample_once`` with the real psutil source and NVML (when a driver answers), ``--ticks``
    times, 50 ms apart, for the app's real worker pid; CPU (process time) and wall time per tick.
(b) Panel, idle: CPU seconds used by the app (UI process and worker) and by the browser over
    ``--idle-s`` seconds with the tab open versus closed, no reply streaming.
(c) Decode: the same long greedy reply (same prompt within a pair, a new prompt per pair) with the
    tab open and closed, interleaved (the order alternates), ``--runs`` pairs; tokens/s from the
    worker's own timing and from the HTTP client; medians and the open/closed ratio.
``--viewer browser`` drives Debian's Chromium (/usr/bin/chromium) on the Resources tab (open) or on
the Chat tab (closed); ``--viewer api`` (no browser installed, e.g. a GPU box) posts the panel's
timer ticks over HTTP once a second, as a browser does, so only the browser's own rendering is left out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_cpu import PROMPTS, _sse_chat, app_endpoint, start_app, stop_app  # noqa: E402
from services.cpu import physical_cores  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def sampler_cost(worker_pid: int | None, ticks: int) -> dict:
    from services.nvml_source import NvmlSource
    from services.sampler import ResourceSampler
    from services.system_source import SystemSource

    system = SystemSource()
    sampler = ResourceSampler(system, NvmlSource(process_name=system.process_name), worker_pid=lambda: worker_pid)
    sampler.sample_once()  # opens NVML (once per app): not a tick
    cpu, wall = [], []
    for _ in range(ticks):
        c0, w0 = time.process_time(), time.perf_counter()
        sample = sampler.sample_once()
        cpu.append(1000 * (time.process_time() - c0))
        wall.append(1000 * (time.perf_counter() - w0))
        time.sleep(0.05)
    sampler.close()
    cpu.sort()
    return {"gpus": len(sample.gpus), "gpu_note": sample.gpu_note, "errors": list(sample.errors),
            "cpu_ms_per_tick_median": statistics.median(cpu), "cpu_ms_per_tick_mean": statistics.mean(cpu),
            "cpu_ms_per_tick_p95": cpu[int(0.95 * (len(cpu) - 1))], "wall_ms_per_tick_median": statistics.median(wall),
            "percent_of_one_core_at_1s": statistics.mean(cpu) / 10}


class ApiViewer:
    """A browser's part of the panel, over HTTP: the tab-select event, the timer's ticks at the interval
    the panel asks for, and another tab's select event to leave."""

    def __init__(self, url: str) -> None:
        import httpx

        from ui.resources_handlers import PANEL_OUTPUTS

        config = httpx.get(url + "config").json()
        deps = config["dependencies"]
        tab = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "tab-resources")
        self.open_fn = next(d["id"] for d in deps if [tab, "select"] in d["targets"])
        tick = next(d for d in deps if any(t[1] == "tick" for t in d["targets"])
                    and len(d["outputs"]) == len(PANEL_OUTPUTS))
        self.tick_fn, timer = tick["id"], tick["outputs"][PANEL_OUTPUTS.index("timer")]
        self.close_fn = next(d["id"] for d in deps  # another tab's select: stops the panel's timer
                             if d["outputs"] == [timer] and any(t[1] == "select" for t in d["targets"]))
        self.url, self.session = url + "gradio_api/run/predict", uuid.uuid4().hex[:12]
        self._on, self._stop = threading.Event(), threading.Event()
        self._client = httpx.Client(timeout=10)
        threading.Thread(target=self._run, daemon=True).start()

    def _post(self, fn: int, data: list) -> list:
        resp = self._client.post(self.url, json={"data": data, "fn_index": fn, "session_hash": self.session})
        resp.raise_for_status()
        return resp.json()["data"]

    def _run(self) -> None:
        from ui.resources_handlers import PANEL_OUTPUTS, REFRESH_S

        interval = REFRESH_S
        while not self._stop.is_set():
            if self._on.wait(0.2):
                timer = self._post(self.tick_fn, [None])[PANEL_OUTPUTS.index("timer")]  # state stays server-side
                if isinstance(timer, dict) and "value" in timer:  # the panel changed its refresh interval
                    interval = timer["value"]
                time.sleep(interval)

    def show(self, on: bool) -> None:
        if on:
            self._post(self.open_fn, [])
            self._on.set()
        else:
            self._on.clear()
            self._post(self.close_fn, [])


class BrowserViewer:
    def __init__(self, url: str) -> None:
        from playwright.sync_api import sync_playwright

        from tests.test_browser import CHROMIUM_ARGS

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.goto(url)
        self.page.wait_for_selector("#message textarea", timeout=60000)

    def show(self, on: bool) -> None:
        self.page.click("#tab-resources-button" if on else "#tab-chat-button")

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def set_panel(viewer, client, on: bool) -> None:
    viewer.show(on)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (client.predict(api_name="/resources_status")["viewers"] > 0) == on:
            time.sleep(1.5)  # a steady state: a few ticks in, or the lease over
            return
    raise RuntimeError(f"the panel did not turn {'on' if on else 'off'}")


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def process_groups(app_pid: int) -> dict[str, list[int]]:
    import psutil

    app = [app_pid] + [p.pid for p in psutil.Process(app_pid).children(recursive=True)]
    others = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in app]
    return {"app": app, "browser": others, "bench": [os.getpid()]}


def idle_cost(viewer, client, app_pid: int, seconds: float) -> dict:
    out = {}
    for state in (False, True, False, True):
        set_panel(viewer, client, state)
        groups = process_groups(app_pid)
        before = {k: cpu_seconds(v) for k, v in groups.items()}
        time.sleep(seconds)
        key = "open" if state else "closed"
        for k, v in groups.items():
            out.setdefault(f"{key}_{k}_cpu_percent", []).append(100 * (cpu_seconds(v) - before[k]) / seconds)
    return {k: statistics.mean(v) for k, v in out.items()}


def add_model_args(parser: argparse.ArgumentParser, ctx: int) -> None:
    parser.add_argument("--model", type=Path, help="GGUF to load (default: the embedded SmolLM2-135M)")
    parser.add_argument("--n-gpu-layers", type=int)
    parser.add_argument("--ctx", type=int, default=ctx)
    parser.add_argument("--threads", type=int, default=physical_cores())


def start_loaded_app(args: argparse.Namespace, port: int, load_timeout_s: float = 900):
    """``python app.py`` on ``args.model`` (a subprocess), once its model is loaded:
    (process, url, gradio client, model status)."""
    from gradio_client import Client

    extra = (("--model", str(args.model)) if args.model else ()) + (
        ("--n-gpu-layers", str(args.n_gpu_layers)) if args.n_gpu_layers is not None else ())
    proc, _ = start_app(port, tempfile.mkdtemp(prefix="fitchat-bench-"), args.threads, args.ctx, extra)
    url = f"http://127.0.0.1:{port}/"
    client = Client(url, verbose=False)
    deadline = time.monotonic() + load_timeout_s
    while (status := client.predict(api_name="/model_status"))["status"] != "ready":
        if status["status"] in ("failed", "crashed") or time.monotonic() > deadline:
            stop_app(proc)
            raise SystemExit(f"the model did not load: {status['error']}")
        time.sleep(0.5)
    return proc, url, client, status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8, help="open/closed pairs of long replies")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=15.0)
    add_model_args(parser, ctx=2048)
    parser.add_argument("--viewer", choices=("browser", "api"), default="browser" if Path(CHROMIUM).exists() else "api")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    port = 7950 + os.getpid() % 40
    proc, url, client, status = start_loaded_app(args, port)
    try:
        base, fn_index = app_endpoint(port)
        report = {"machine_load_before": load_before, "viewer": args.viewer, "model": status["model"],
                  "threads": args.threads, "max_tokens": args.max_tokens, "runs": args.runs}
        report["sampler"] = sampler_cost(status["worker_pid"], args.ticks)
        print("sampler:", json.dumps(report["sampler"]), flush=True)
        viewer = BrowserViewer(url) if args.viewer == "browser" else ApiViewer(url)
        report["idle"] = idle_cost(viewer, client, proc.pid, args.idle_s)
        print("idle:", json.dumps(report["idle"]), flush=True)
        _sse_chat(base, fn_index, PROMPTS[0], args.max_tokens)  # warm-up
        runs = {"open": [], "closed": []}
        # CPU the browser and the app's UI process take during each reply: what the panel costs the
        # model directly, free of the machine's speed swings that tokens/s carry.
        watched = {"browser": process_groups(proc.pid)["browser"], "ui": [proc.pid]}
        for i in range(args.runs):
            for state in ((True, False) if i % 2 == 0 else (False, True)):
                set_panel(viewer, client, state)
                before, start = {k: cpu_seconds(v) for k, v in watched.items()}, time.perf_counter()
                row = _sse_chat(base, fn_index, PROMPTS[i + 1], args.max_tokens)
                wall = time.perf_counter() - start
                row.update({f"{k}_cpu_percent": 100 * (cpu_seconds(v) - before[k]) / wall for k, v in watched.items()})
                runs["open" if state else "closed"].append(row)
                print(i, "open" if state else "closed", json.dumps(row), flush=True)
        report["app_sampler_status"] = client.predict(api_name="/resources_status")
        if isinstance(viewer, BrowserViewer):
            viewer.close()
        summary = {}
        for key in ("server_tokens_per_s", "tokens_per_s", "ttft_s", "browser_cpu_percent", "ui_cpu_percent"):
            o, c = (statistics.median(r[key] for r in runs[s]) for s in ("open", "closed"))
            summary[key] = {"open": o, "closed": c, "open_vs_closed": o / c}
        pair = [o["server_tokens_per_s"] / c["server_tokens_per_s"] for o, c in zip(runs["open"], runs["closed"])]
        summary["pairwise_ratio_median"] = statistics.median(pair)
        summary["pairwise_ratio_min_max"] = [min(pair), max(pair)]
        report.update(summary=summary, runs=runs, machine_load_after=os.getloadavg())
        print(json.dumps(summary, indent=2))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))
    finally:
        stop_app(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
