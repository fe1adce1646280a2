"""Screenshot of the Resources tab under a real load (for docs/), with the sampled CSV beside it.

    .venv/bin/python bench/resources_screenshot.py --model PATH.gguf --n-gpu-layers -1 --ctx 8192 \\
        --out docs/screenshot-resources-gpu.png

Starts the app on the model, streams a long reply (greedy, through the HTTP API), opens the
Resources tab in Debian's Chromium, waits ``--wait-s`` seconds of history while the reply streams,
saves the full-page screenshot to ``--out`` and the exported history to the same name with ``.csv``,
and prints the placement card and the sampler's status (ticks, CPU per tick, GPU note).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_cpu import _sse_chat, app_endpoint, stop_app  # noqa: E402
from bench.resources_cpu import CHROMIUM, BrowserViewer, add_model_args, start_loaded_app  # noqa: E402

PROMPT = ("Write a very long, detailed story about a lighthouse keeper named Ada, a storm, a lost ship and "
          "the town that searched for it. Describe every character and every hour of the night.")


def main() -> int:
    parser = argparse.ArgumentParser()
    add_model_args(parser, ctx=8192)
    parser.add_argument("--max-tokens", type=int, default=3000)
    parser.add_argument("--wait-s", type=float, default=20.0, help="history to gather before the screenshot")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot-resources-gpu.png")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium (Playwright only drives it)")
    port = 7990 + os.getpid() % 9
    proc, url, client, _ = start_loaded_app(args, port)
    try:
        base, fn_index = app_endpoint(port)
        reply: dict = {}
        chat = threading.Thread(target=lambda: reply.update(_sse_chat(base, fn_index, PROMPT, args.max_tokens)),
                                daemon=True)
        chat.start()
        while not client.predict(api_name="/model_status")["generating"]:
            time.sleep(0.1)
        viewer = BrowserViewer(url)
        viewer.page.set_viewport_size({"width": 1500, "height": 1200})
        viewer.show(True)
        time.sleep(args.wait_s)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.page.screenshot(path=str(args.out), full_page=True)
        shutil.copy(client.predict(api_name="/resources_csv"), args.out.with_suffix(".csv"))
        print(viewer.page.inner_text("#resources-placement"))
        print(viewer.page.inner_text("#resources-warning"))
        print(json.dumps(client.predict(api_name="/resources_status"), indent=2))
        viewer.close()
        chat.join(timeout=300)
        print("reply:", json.dumps(reply))
        print(f"saved {args.out} and {args.out.with_suffix('.csv')}")
    finally:
        stop_app(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
