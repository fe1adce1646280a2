"""The UI-side half of the supervised worker: a Backend that runs the model in a child process.

A crash, an out-of-memory kill or a ``kill -9`` of the child becomes a ``WorkerCrashed`` error
with the exit status and the last lines the child logged; the UI process carries on. Unloading
ends the child, so all of its memory (VRAM included) really comes back.
"""
from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Callable, Generator, Optional

from backends import worker_protocol as wp
from backends.base import (ERROR_KINDS, BackendError, ChatStream, LoadSpec, ModelInfo, NotLoadedError,
                           TokenLogprob, TokenLogprobs, WorkerCrashed, check_logprobs)
from core.generation import GenerationProgress, GenerationStats
from core.options import SamplingOptions
from services.paths import project_root

_POLL_S = 0.05
_GONE = ("gone",)  # the connection to the worker ended
_DRAIN_TIMEOUT_S = 5.0


def describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (often: out of memory)" if -returncode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {returncode}"


class WorkerBackend:
    """Backend protocol over a worker process. Thread-safe; as many replies at once as the loaded
    model has slots (``ModelInfo.n_parallel``): a reader thread routes each message to its request."""

    def __init__(self, backend: str = "llama_cpp", python: str = sys.executable,
                 start_timeout_s: float = 60.0, extra_env: Optional[dict] = None) -> None:
        self.name = backend
        self._python = python
        self._start_timeout_s = start_timeout_s
        self._extra_env = extra_env or {}
        self._proc: Optional[subprocess.Popen] = None
        self._conn: Optional[Connection] = None
        self._send_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stderr_tail: deque[str] = deque(maxlen=200)
        self._info: Optional[ModelInfo] = None
        self._control: queue.SimpleQueue = queue.SimpleQueue()  # messages that belong to no request
        self._inboxes: dict[int, queue.SimpleQueue] = {}
        self._crash_lock = threading.Lock()
        self._crash: Optional[WorkerCrashed] = None

    @property
    def info(self) -> Optional[ModelInfo]:
        return self._info

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def stderr_tail(self, n: int = 20) -> list[str]:
        return list(self._stderr_tail)[-n:]

    # -- process management ----------------------------------------------------------------
    def _start(self, hide_gpus: bool = False) -> None:
        parent, child = Pipe(duplex=True)
        path = os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH", "")]))
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", **self._extra_env)
        # CUDA numbers GPUs fastest first by default, NVML by PCI bus: the same order for both, so
        # that a plan's GPU i (NVML) is llama.cpp's and torch's device i.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        if hide_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""  # llama.cpp and torch then find no CUDA device
        self._stderr_tail.clear()
        self._proc = subprocess.Popen(
            [self._python, "-m", "backends.worker_main", "--fd", str(child.fileno()), "--backend", self.name],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, cwd=str(project_root()), env=env, start_new_session=True,
        )
        child.close()
        self._conn = parent
        self._control, self._inboxes, self._crash = queue.SimpleQueue(), {}, None
        threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True,
                         name="worker-stderr").start()
        threading.Thread(target=self._route, args=(parent, self._control, self._inboxes), daemon=True,
                         name="worker-messages").start()
        msg = self._recv(timeout=self._start_timeout_s)
        if msg is None or msg[0] != wp.READY:
            self._kill()
            raise WorkerCrashed("The model worker did not start in time.")

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            self._stderr_tail.append(raw.decode("utf-8", errors="replace").rstrip())
        proc.stderr.close()

    def _send(self, msg: tuple) -> None:
        if self._conn is None:
            raise NotLoadedError("No model is loaded.")
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            raise self._crashed() from None

    @staticmethod
    def _route(conn: Connection, control: queue.SimpleQueue, inboxes: dict[int, queue.SimpleQueue]) -> None:
        """Every message from the worker goes to its request's inbox (dropped when the request has
        gone), or to ``control``; when the connection ends, everyone waiting hears ``_GONE``."""
        try:
            while True:
                msg = conn.recv()
                if msg[0] in (wp.READY, wp.LOADED, wp.BYE) or len(msg) < 2 or not isinstance(msg[1], int):
                    control.put(msg)
                elif (inbox := inboxes.get(msg[1])) is not None:
                    inbox.put(msg)
        except (EOFError, OSError, TypeError):
            pass
        control.put(_GONE)
        for inbox in list(inboxes.values()):
            inbox.put(_GONE)

    def _recv(self, timeout: float, inbox: Optional[queue.SimpleQueue] = None) -> Optional[tuple]:
        """The next message of ``inbox`` (default: the messages of no request), None on timeout;
        raises WorkerCrashed when the worker is gone."""
        try:
            msg = (inbox or self._control).get(timeout=timeout)
        except queue.Empty:
            return None
        if msg is _GONE:
            (inbox or self._control).put(_GONE)  # whoever asks next hears it too
            raise self._crashed()
        return msg

    def _crashed(self) -> WorkerCrashed:
        """The worker is gone: the one message for every reply that was running (made once)."""
        with self._crash_lock:
            if self._crash is None:
                self._crash = self._describe_crash()
            return self._crash

    def _describe_crash(self) -> WorkerCrashed:
        proc = self._proc
        returncode = None
        if proc is not None:
            try:
                returncode = proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.05)  # let the stderr reader catch the last lines
        tail = [line for line in self.stderr_tail(40) if line.strip()]
        important = [line for line in tail if any(k in line for k in ("GGML_ASSERT", "error", "Error", "failed", "out of memory", "Killed"))]
        detail = f" Last error logged: {important[-1][:300]}" if important else ""
        self._kill()
        return WorkerCrashed(f"The model worker {describe_exit(returncode)}. The model is unloaded; "
                             f"load it again to continue.{detail}")

    def exit_message(self) -> Optional[str]:
        """For the manager's watchdog: the crash message when the worker died while idle (the
        backend is then reset), else None. Never waits for a reply or load in progress."""
        if not self._gen_lock.acquire(blocking=False):
            return None
        try:
            if self._proc is not None and self._proc.poll() is not None:
                return str(self._crashed())
            return None
        finally:
            self._gen_lock.release()

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn, self._info = None, None, None
        if conn is not None:
            conn.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _stop(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.poll() is None:
                with self._send_lock:
                    self._conn.send((wp.SHUTDOWN,))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    msg = self._recv(timeout=0.1)
                    if msg and msg[0] == wp.BYE:
                        break
                self._proc.wait(timeout=5)
        except (WorkerCrashed, BrokenPipeError, EOFError, OSError, subprocess.TimeoutExpired):
            pass
        self._kill()

    # -- Backend protocol ------------------------------------------------------------------
    def load(self, spec: LoadSpec) -> ModelInfo:
        with self._gen_lock:
            self._stop()
            self._start(spec.hide_gpus)
            self._send((wp.LOAD, spec.to_dict()))
            while True:
                msg = self._recv(timeout=1.0)
                if msg is None:
                    continue
                if msg[0] == wp.LOADED:
                    self._info = ModelInfo.from_dict(msg[1])
                    return self._info
                if msg[0] == wp.ERROR:
                    self._stop()
                    raise ERROR_KINDS.get(msg[2], BackendError)(msg[3])

    def unload(self) -> None:
        with self._gen_lock:
            self._stop()

    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions,
                    cancel: threading.Event, logprobs: Optional[int] = None) -> ChatStream:
        """``logprobs``: None, or the number of most likely tokens to report with each token's own
        log-probability (``ChatStream.logprobs``; a backend that cannot report them refuses the reply)."""
        if self._proc is None or self._info is None:
            raise NotLoadedError("No model is loaded.")
        check_logprobs(logprobs)
        progress = GenerationProgress(started=time.monotonic(), n_ctx=self._info.n_ctx)
        entries = TokenLogprobs()
        return ChatStream(self._stream(messages, params, cancel, progress, logprobs, entries), progress,
                          logprobs=entries)

    def _stream(self, messages: list[dict] | str, params: SamplingOptions, cancel: threading.Event,
                progress: GenerationProgress, logprobs: Optional[int],
                entries: TokenLogprobs) -> Generator[str, None, GenerationStats]:
        def on_message(msg: tuple) -> Optional[str]:
            if msg[0] != wp.DELTA:
                return None
            now = time.monotonic()
            progress.prompt_tokens, progress.completion_tokens, progress.n_ctx = msg[3:6]
            if progress.completion_tokens:
                progress.first_token_at = progress.first_token_at or now
                progress.last_token_at = now
            if len(msg) > 6:  # this text's tokens' log-probabilities, added before the text is yielded
                entries.add(TokenLogprob(token, logprob, tuple(map(tuple, top))) for token, logprob, top in msg[6])
            return msg[2] or None  # a DELTA without text carries only the counts

        asked = () if logprobs is None else (logprobs,)  # a worker that knows no logprobs never sees the item
        done = yield from self._exchange(cancel, on_message, wp.CHAT, messages, params.model_dump(), *asked)
        return GenerationStats.from_dict(done)

    def score_text(self, text: str, opts, cancel: threading.Event, ref: Optional[dict] = None,
                   keep_top: bool = False) -> Generator[tuple, None, bool]:
        """The quality check on the loaded model: yields ("start", n_tokens, windows_total, vocab) and
        then ("window", score_dict, top_ids, top_logprobs) per window; returns True when complete,
        False when ``cancel`` stopped it. ``ref``: a ``backends.text_scoring.Reference`` as a dict;
        ``keep_top``: send this model's top-k per position (it is measured as a reference)."""
        if self._proc is None or self._info is None:
            raise NotLoadedError("No model is loaded.")

        def on_message(msg: tuple) -> Optional[tuple]:
            if msg[0] == wp.SCORE_START:
                return ("start", *msg[2:5])
            if msg[0] == wp.WINDOW:
                return ("window", *msg[2:5])
            return None

        done = yield from self._exchange(cancel, on_message, wp.SCORE, text, opts.model_dump(), ref, keep_top)
        return bool(done.get("complete"))

    def _exchange(self, cancel: threading.Event, on_message: Callable[[tuple], object],
                  op: str, *args) -> Generator[object, None, dict]:
        """One request to the worker, ``(op, req_id, *args)``: yields ``on_message(msg)`` for each of its
        messages (None yields nothing) until its DONE, whose payload it returns, or its ERROR, which it
        raises. ``cancel`` is passed on to the worker once; a consumer that leaves early has the worker's
        work stopped and waited for."""
        req_id, inbox = next(self._ids), queue.SimpleQueue()
        self._inboxes[req_id] = inbox
        finished = cancel_sent = False
        try:
            self._send((op, req_id, *args))
            while True:
                if cancel.is_set() and not cancel_sent:
                    self._send((wp.CANCEL, req_id))
                    cancel_sent = True
                msg = self._recv(_POLL_S, inbox)
                if msg is None:
                    continue
                if msg[0] == wp.DONE:
                    finished = True
                    return msg[2]
                if msg[0] == wp.ERROR:
                    finished = True
                    raise ERROR_KINDS.get(msg[2], BackendError)(msg[3])
                item = on_message(msg)
                if item is not None:
                    yield item
        finally:
            if not finished and self._proc is not None:
                self._abandon(req_id, inbox)
            self._inboxes.pop(req_id, None)

    def _abandon(self, req_id: int, inbox: queue.SimpleQueue) -> None:
        """The consumer went away mid-reply: stop the worker's generation and wait for its end."""
        try:
            self._send((wp.CANCEL, req_id))
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                msg = self._recv(_POLL_S, inbox)
                if msg and msg[0] in (wp.DONE, wp.ERROR):
                    return
            self._kill()  # it would not stop: end it rather than leave it generating
        except WorkerCrashed:
            pass

    def close(self) -> None:
        self.unload()
