"""The Resources tab's sampler against a real GPU load (issue 6), without a browser or Gradio:

    python3 bench/gpu_nvml_sampler.py --model /tmp/m/l31-8b.gguf --out /tmp/job/out/nvml_sampler.json
    python3 bench/gpu_nvml_sampler.py --model /tmp/m/l31-8b.gguf --timeline --out /tmp/job/out/timeline.json

Samples with the real NVML and psutil sources once a second while it loads the model through the
app's ModelManager (planned for this machine) and streams long replies, and writes the samples, the
sampler's CPU time per tick, the placement card (measured beside the planner's prediction) and
the VRAM warnings: what the tab shows, as text. ``--timeline`` samples a whole session instead:
idle with no model, the load, a reply, a pause, a second reply, so that the recording
(bench/resources_replay.py replays it into the Resources tab) shows every phase.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LoadSpec  # noqa: E402
from backends.manager import ModelManager  # noqa: E402
from core.options import LoadOptions, SamplingOptions  # noqa: E402
from core.placement import LoadedModel, placement_card, vram_warnings  # noqa: E402
from services.hardware import probe  # noqa: E402
from backends.load_planning import LoadPlanner, cached_probe  # noqa: E402
from services.sampler import for_manager  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--timeline", action="store_true", help="idle, load, reply, pause, reply (about a minute)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    data_dir = Path("/tmp/fitchat-nvml")
    manager = ModelManager(planner=LoadPlanner(data_dir, cached_probe(probe)))
    sampler = for_manager(manager)
    samples: list = []

    def sample_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.append(sampler.sample_once())
            time.sleep(1.0)

    def reply_for(seconds: float) -> None:
        cancel = threading.Event()
        stream = manager.stream_chat([{"role": "user", "content": "Write a very long story."}],
                                     SamplingOptions(temperature=0.0, max_tokens=100000), cancel)
        reader = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
        reader.start()
        sample_for(seconds)
        cancel.set()
        reader.join(timeout=10)

    if a.timeline:
        sample_for(6)
        loader = threading.Thread(target=manager.load, args=(LoadSpec(a.model, LoadOptions(n_ctx=a.ctx)),))
        loader.start()
        while loader.is_alive():
            samples.append(sampler.sample_once())
            loader.join(timeout=1.0)
        info = manager.state().info
        sample_for(3)
        reply_for(24)
        sample_for(8)
        reply_for(14)
        sample_for(3)
    else:
        info = manager.load(LoadSpec(a.model, LoadOptions(n_ctx=a.ctx)))
        reply_for(a.seconds)
    latest = samples[-1]
    model = LoadedModel(info.name, info.n_layer, info.n_gpu_layers, info.gpu_offload_supported, info.n_ctx,
                        info.kv_type, info.flash_attn, tuple((b.device, b.kind, b.mib) for b in info.buffers),
                        info.worker_pid)
    worker_vram = {g.index: g.process_bytes("worker") for g in latest.gpus}
    plan = manager.state().plan
    card = placement_card(model, plan, worker_vram,
                          last_tokens_per_s=latest.generation.tokens_per_s if latest.generation else None)
    report = {"model": a.model, "plan": plan.to_dict() if plan else None, "info": info.to_dict(),
              "placement_card": card, "warnings": vram_warnings(latest.gpus, plan, model),
              "gpu_note": sampler.gpu_note, "cpu_ms_per_tick": [round(s.cost_ms, 3) for s in samples],
              "samples": [asdict(s) for s in samples]}
    manager.close()
    sampler.close()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1, default=str))
    print(card)
    print("warnings:", report["warnings"], "\nCPU ms per tick:", report["cpu_ms_per_tick"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
