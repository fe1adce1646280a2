"""Does the chat's time to first token grow across sends from one browser tab? (issue 12)

    .venv/bin/python bench/chat_session_growth.py [--sends 12] [--max-tokens 32] [--out FILE]

One app (embedded SmolLM2-135M), one Gradio session (a browser tab), ``--sends`` messages over
the queue's ``/send``, each timed by the client (request -> first reply text) next to the worker's
own TTFT. Two series in the same run: pressing New chat between sends (what a user starting a new
conversation does), and not pressing it (each send continues the tab's conversation: the chat
history is a ``gr.State``, kept on the server per session, so a client that passes an empty
history does NOT start a new conversation). Also counted per send: the history length the server
returned and the bytes of the final event.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chat_cpu as cc  # noqa: E402


def one(base: str, fn_index: int, session: str, prompt: str, max_tokens: int) -> dict:
    row = cc._sse_chat(base, fn_index, prompt, max_tokens, session)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
            if k in ("ttft_s", "server_ttft_s", "tokens", "chat_messages")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sends", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    port = 7950 + int(time.time()) % 40
    proc, _ = cc.start_app(port, tempfile.mkdtemp(prefix="fitchat-growth-"), a.threads, 2048)
    try:
        base, fn_index = cc.app_endpoint(port)
        out = {}
        for label, press_new in (("new_chat_between", True), ("no_new_chat", False)):
            session = uuid.uuid4().hex[:12]
            rows = []
            for i in range(a.sends + 1):  # send 0: the tab's first event, paid at page load in a browser
                if press_new:
                    cc.new_chat(base, session)
                row = one(base, fn_index, session, cc.PROMPTS[i], a.max_tokens)
                rows.append(row)
                print(label, i, row, flush=True)
            out[label] = rows[1:]
        print(json.dumps({k: [r["ttft_s"] for r in v] for k, v in out.items()}, indent=1))
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(out, indent=1))
    finally:
        cc.stop_app(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
