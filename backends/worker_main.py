"""The model worker process: ``python -m backends.worker_main --fd N --backend llama_cpp``.

It owns the model. Commands arrive on a ``multiprocessing.connection.Connection`` over an
inherited socket; replies go back on the same connection (see ``backends.worker_protocol``).
The main thread reads commands (so a cancel arrives while a reply is generating); each chat
runs on its own thread, and as many run at once as the engine has slots (``ModelInfo.n_parallel``). When the UI process goes away the connection closes and the worker exits.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

from backends import worker_protocol as wp
from backends.base import BackendError, LoadSpec
from core.options import SamplingOptions

_BATCH_S = 0.02
_PROGRESS_S = 0.25


def make_engine(backend: str):
    if backend == "llama_cpp":
        from backends.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine()
    if backend == "transformers":
        from backends.transformers_engine import TransformersEngine

        return TransformersEngine()
    raise BackendError(f"unknown backend {backend!r}")


class Worker:
    def __init__(self, conn: Connection, engine) -> None:
        self.conn = conn
        self.engine = engine
        self._send_lock = threading.Lock()
        self._threads: dict[int, threading.Thread] = {}  # chats and quality checks in progress
        self._cancels: dict[int, threading.Event] = {}

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def send_error(self, req_id, exc: BaseException) -> None:
        if isinstance(exc, BackendError):
            self.send((wp.ERROR, req_id, exc.kind, str(exc)))
        else:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.send((wp.ERROR, req_id, "error", f"Internal error in the model worker: {detail}"))

    def _running(self, wait_s: float = 0.0) -> int:
        # The client counts a reply as over at its DONE, so a live thread may be finishing up.
        deadline = time.monotonic() + wait_s
        for req_id, thread in list(self._threads.items()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if not thread.is_alive():
                self._threads.pop(req_id, None)
                self._cancels.pop(req_id, None)
        return len(self._threads)

    def busy(self) -> bool:
        return self._running(wait_s=2) > 0

    def _capacity(self) -> int:
        info = getattr(self.engine, "info", None)
        return max(1, getattr(info, "n_parallel", 1) or 1)

    def _start_job(self, req_id: int, target, args: tuple, name: str) -> None:
        cancel = threading.Event()
        self._cancels[req_id] = cancel
        thread = threading.Thread(target=target, args=(req_id, *args, cancel), name=f"{name}-{req_id}", daemon=True)
        self._threads[req_id] = thread
        thread.start()

    def handle_load(self, spec_dict: dict) -> None:
        if self.busy():
            self.send((wp.ERROR, None, "error", "Cannot load while a reply is being generated."))
            return
        try:
            info = self.engine.load(LoadSpec.from_dict(spec_dict))
        except Exception as exc:  # every failure goes back to the UI as a message
            self.send_error(None, exc)
            return
        data = info.to_dict()
        data["worker_pid"] = os.getpid()
        self.send((wp.LOADED, data))

    def handle_chat(self, req_id: int, messages: list, params: dict, logprobs=None) -> None:
        if self._running() >= self._capacity() and self._running(wait_s=2) >= self._capacity():
            self.send((wp.ERROR, req_id, "error", "The worker is already generating as many replies as it has "
                                                  "slots for."))
            return
        self._start_job(req_id, self._run_chat, (messages, params, logprobs), "chat")

    def _run_chat(self, req_id: int, messages: list, params: dict, logprobs, cancel: threading.Event) -> None:
        finished = threading.Event()
        try:
            # logprobs is passed only when asked: an engine without them never sees the argument.
            asked = {} if logprobs is None else {"logprobs": logprobs}
            stream = self.engine.stream_chat(messages, SamplingOptions(**params), cancel, **asked)
            sent = {"counts": None}
            threading.Thread(target=self._report_progress, args=(req_id, stream, sent, finished), daemon=True,
                             name=f"progress-{req_id}").start()
            pending, last_sent = "", 0.0
            for delta in stream:
                # The first delta goes at once (time to first token); later ones are batched a
                # little, which halves the wake-ups of the UI process at ~100 tokens/s.
                pending += delta
                now = time.monotonic()
                if now - last_sent >= _BATCH_S:
                    sent["counts"] = self._counts(stream)
                    self.send((wp.DELTA, req_id, pending, *sent["counts"], *self._entries(stream, logprobs)))
                    pending, last_sent = "", now
            finished.set()
            entries = self._entries(stream, logprobs)
            if pending or entries:
                self.send((wp.DELTA, req_id, pending, *self._counts(stream), *entries))
            self.send((wp.DONE, req_id, stream.stats.to_dict()))
        except (BrokenPipeError, EOFError, OSError):
            os._exit(0)  # the UI process is gone
        except Exception as exc:
            self.send_error(req_id, exc)
        finally:
            finished.set()

    def handle_score(self, req_id: int, text: str, opts: dict, ref, keep_top: bool) -> None:
        if self.busy():
            self.send((wp.ERROR, req_id, "error", "The worker is already generating a reply."))
            return
        self._start_job(req_id, self._run_score, (text, opts, ref, keep_top), "score")

    def _run_score(self, req_id: int, text: str, opts: dict, ref, keep_top: bool, cancel: threading.Event) -> None:
        from backends.text_scoring import Reference, ScoreStart
        from core.quality import QualityError, QualityOptions

        try:
            reference = Reference(**ref) if ref is not None else None
            events = self.engine.score_text(text, QualityOptions(**opts), cancel, reference, keep_top)
            while True:
                try:
                    event = next(events)
                except StopIteration as stop:
                    self.send((wp.DONE, req_id, {"complete": bool(stop.value)}))
                    return
                if isinstance(event, ScoreStart):
                    self.send((wp.SCORE_START, req_id, event.n_tokens, event.windows_total, event.vocab))
                else:
                    self.send((wp.WINDOW, req_id, event.score.to_dict(), event.top_ids, event.top_lps))
        except (BrokenPipeError, EOFError, OSError):
            os._exit(0)
        except QualityError as exc:
            self.send((wp.ERROR, req_id, "quality", str(exc)))
        except Exception as exc:
            self.send_error(req_id, exc)

    def _report_progress(self, req_id: int, stream, sent: dict, finished: threading.Event) -> None:
        """Token counts reach the UI even while tokens bring no text (a special token, a character
        split over several tokens): a DELTA without text, at most every ``_PROGRESS_S``."""
        while not finished.wait(_PROGRESS_S):
            counts = self._counts(stream)
            if counts != sent["counts"] and counts[1] > 0:
                sent["counts"] = counts
                try:
                    self.send((wp.DELTA, req_id, "", *counts))
                except (BrokenPipeError, EOFError, OSError):
                    return

    @staticmethod
    def _entries(stream, logprobs) -> tuple:
        """A DELTA's optional last item: the log-probability entries of its text's tokens (plain tuples)."""
        if logprobs is None:
            return ()
        entries = stream.logprobs.take()
        return (list(map(tuple, entries)),) if entries else ()

    @staticmethod
    def _counts(stream) -> tuple[int, int, int]:
        p = stream.progress
        return p.prompt_tokens, p.completion_tokens, p.n_ctx

    def serve(self) -> None:
        self.send((wp.READY, os.getpid()))
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)
            op = msg[0]
            if op == wp.LOAD:
                self.handle_load(msg[1])
            elif op == wp.CHAT:
                self.handle_chat(msg[1], msg[2], msg[3], msg[4] if len(msg) > 4 else None)
            elif op == wp.SCORE:
                self.handle_score(msg[1], msg[2], msg[3], msg[4], bool(msg[5]))
            elif op == wp.CANCEL:
                event = self._cancels.get(msg[1])
                if event:
                    event.set()
            elif op == wp.SHUTDOWN:
                for event in list(self._cancels.values()):
                    event.set()
                self._running(wait_s=2)
                self.engine.unload()
                self.send((wp.BYE,))
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fitchat-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--backend", default="llama_cpp")
    args = parser.parse_args(argv)
    os.dup2(2, 1)  # native code may print to stdout; keep it with the log on stderr
    conn = Connection(args.fd)
    try:
        worker = Worker(conn, make_engine(args.backend))
    except Exception as exc:
        conn.send((wp.ERROR, None, "error", f"The model worker could not start: {exc}"))
        return 1
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
