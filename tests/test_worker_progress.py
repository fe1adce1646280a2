"""The worker reports token counts while a reply's tokens bring no text yet (special tokens, a
character split over several tokens), so the Resources tab's tokens/s does not read 0 while the
model generates. The worker's message loop is what is tested; the engine here is a stand-in that
produces tokens without text on a timer."""
from __future__ import annotations

import threading
import time
from multiprocessing import Pipe

from backends import worker_protocol as wp
from backends.base import ChatStream
from backends.worker_main import Worker
from core.generation import GenerationProgress, GenerationStats


class SilentTokens:
    """Counts 20 tokens over 1 s without any text, then yields the whole text at once."""

    def stream_chat(self, messages, params, cancel):
        progress = GenerationProgress(started=time.monotonic(), prompt_tokens=5)

        def run():
            for i in range(1, 21):
                time.sleep(0.05)
                progress.completion_tokens = i
            yield "twenty tokens"
            return GenerationStats(prompt_tokens=5, completion_tokens=20, ttft_s=0.05, decode_tokens_per_s=20.0,
                                   total_s=1.0, n_ctx=0, finish_reason="stop")

        return ChatStream(run(), progress)

    def unload(self):
        pass


def test_counts_arrive_before_any_text():
    ui, worker_end = Pipe(duplex=True)
    worker = Worker(worker_end, SilentTokens())
    threading.Thread(target=worker.serve, daemon=True).start()
    assert ui.recv()[0] == wp.READY
    ui.send((wp.CHAT, 1, [{"role": "user", "content": "hi"}], {}))
    received = []
    while True:
        assert ui.poll(5), "the worker went silent"
        msg = ui.recv()
        received.append((time.monotonic(), msg))
        if msg[0] == wp.DONE:
            break
    ui.send((wp.SHUTDOWN,))
    assert ui.poll(5) and ui.recv()[0] == wp.BYE
    silent = [msg for _, msg in received if msg[0] == wp.DELTA and msg[2] == ""]
    texts = [msg for _, msg in received if msg[0] == wp.DELTA and msg[2]]
    assert len(silent) >= 2, received  # one every 0.25 s over the second of silent tokens
    counts = [msg[4] for msg in silent]
    assert counts == sorted(counts) and 0 < counts[0] < 20
    assert texts == [(wp.DELTA, 1, "twenty tokens", 5, 20, 0)]
    assert received[-1][1][0] == wp.DONE
