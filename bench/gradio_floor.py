"""What Gradio's queue alone adds to a chat's time to first token (issue 16's reference point).

    .venv/bin/python bench/gradio_floor.py [--runs 10] [--engine-ms 200]

A bare Blocks app with one generator, shaped like the chat's Send: it yields the user's message,
waits --engine-ms (the engine's time to its first token), then yields the reply. The same client
as bench/remote_cpu.py (``queue/join`` then the ``queue/data`` stream, one keep-alive connection)
times the reply's arrival; what exceeds --engine-ms is the framework's own cost, which no app built
on Gradio's queue can go under.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_cpu import _fn_index, join, queue_events  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--engine-ms", type=float, default=200.0)
    ap.add_argument("--port", type=int, default=7861)
    a = ap.parse_args()
    import gradio as gr

    def send(message, history):
        history = (history or []) + [{"role": "user", "content": message}]
        yield history, history
        time.sleep(a.engine_ms / 1000)
        history = history + [{"role": "assistant", "content": "hi"}]
        yield history, history

    with gr.Blocks() as demo:
        state = gr.State([])
        chat = gr.Chatbot()
        box = gr.Textbox()
        box.submit(send, [box, state], [chat, state], api_name="send")
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_port=a.port, prevent_thread_lock=True, quiet=True)
    try:
        base = f"http://127.0.0.1:{a.port}/gradio_api"
        fn = _fn_index(base, "send")
        added = []
        for i in range(a.runs + 1):  # the first run warms up
            session = uuid.uuid4().hex
            start = time.perf_counter()
            join(base, fn, session, ["hello", None])
            times = [now - start for now, msg in queue_events(base, session) if msg.get("msg") == "process_generating"]
            if i:
                added.append(1000 * times[-1] - a.engine_ms)
        print(f"reply after the engine's {a.engine_ms:.0f} ms: +{statistics.median(added):.1f} ms median "
              f"(min {min(added):.1f}, max {max(added):.1f}, {a.runs} runs)")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
