"""ModelManager: the one resident model of the app, shared by every user.

Up to ``ModelInfo.n_parallel`` replies run at once (the engine's slots); loads and unloads run
alone (``backends.model_gate``). Replies beyond the slots wait in one bounded first-come-first-served
line (``backends.turns``), whether they come from the web UI or the API.
A load is refused (clearly) while a reply is being generated; a reply waits for a load in
progress. Before any worker starts,
the file's header is checked in this process so that missing, non-GGUF and truncated files get
a plain message.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Literal, Optional, Protocol

from backends.base import (Backend, BackendError, ChatStream, LoadSpec, ModelInfo, ModelLoadError,
                           NotLoadedError, TemplateError, WorkerCrashed)
from backends.model_gate import ModelGate
from backends.turns import BusyError, Turn, TurnQueue
from backends.watchdog import IdleWatch, RestartPolicy
from core.chat_template import TemplateRenderError, choose_template
from core.generation import GenerationProgress, GenerationStats
from core.gguf_header import GGUFError
from core.options import SamplingOptions
from core.plan import Plan
from services.gguf_file import read_header
from services.template_process import check_template, transformers_template_text

Status = Literal["empty", "loading", "ready", "failed", "crashed"]


@dataclass(frozen=True)
class ManagerState:
    status: Status
    spec: Optional[LoadSpec] = None
    info: Optional[ModelInfo] = None
    error: Optional[str] = None
    generating: bool = False
    running: int = 0     # replies being generated now
    slots: int = 1       # replies the loaded model generates at once
    plan: Optional[Plan] = None  # the planner's prediction for the loaded model


class LoadPlannerHook(Protocol):
    def prepare(self, spec: LoadSpec) -> tuple[LoadSpec, Optional[Plan]]:
        """The spec to execute and its plan; ModelLoadError for unreadable files or loads that cannot fit."""

    def chat_template(self, spec: LoadSpec) -> object:
        """The model's raw chat template (None: none), from what ``prepare`` read."""

    def learn(self, info: ModelInfo) -> object: ...


def _check_template_first(spec: LoadSpec, raw_template: object) -> None:
    """Check the new model's chat template before the serving model is unloaded: a template that
    fails its check leaves the model that was serving in place. The worker checks it again at load
    with the real special-token texts."""
    if not isinstance(raw_template, str) or not raw_template.strip():
        return  # the ChatML fallback
    try:
        check_template(choose_template(raw_template))
    except TemplateRenderError as exc:
        raise TemplateError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None


def _default_factory(name: str) -> Backend:
    from backends.worker_client import WorkerBackend

    return WorkerBackend(name)


class ModelManager:
    def __init__(self, backend_factory: Callable[[str], Backend] = _default_factory,
                 planner: Optional[LoadPlannerHook] = None, max_waiting: int = 8) -> None:
        self._factory = backend_factory
        self._planner = planner
        self._backend: Optional[Backend] = None
        self._gate = ModelGate()  # up to n_parallel replies, or one load/unload
        self._turns = TurnQueue(self._gate.seat, max_waiting)
        self._state = ManagerState("empty")
        self._state_lock = threading.Lock()
        self._settled = threading.Event()
        self._settled.set()
        self._live: dict[int, GenerationProgress] = {}  # the replies in progress, oldest first
        self._last_stats: Optional[GenerationStats] = None
        self._restarts = RestartPolicy()
        self._epoch = 0  # bumped by every load or unload a person asks for: a pending restart then stands down
        self._watch: Optional[IdleWatch] = None

    def state(self) -> ManagerState:
        with self._state_lock:
            return self._state

    def _set(self, **changes) -> None:
        with self._state_lock:
            self._state = ManagerState(**{**self._state.__dict__, **changes})

    def generation(self) -> tuple[Optional[GenerationProgress], Optional[GenerationStats]]:
        """A copy of the reply in progress (the latest to start when several run; None when idle) and
        the stats of the last finished one. Cheap: never touches the worker (safe to poll from a UI timer)."""
        live = list(self._live.values())
        return (dataclasses.replace(live[-1]) if live else None), self._last_stats

    def running(self) -> int:
        """Replies being generated now."""
        return len(self._live)

    def wait_settled(self, timeout: Optional[float] = None) -> bool:
        """Wait until no load is in progress."""
        return self._settled.wait(timeout)

    # -- load / unload ---------------------------------------------------------------------
    def load(self, spec: LoadSpec, busy_timeout_s: float = 1.0, restart: bool = False) -> ModelInfo:
        if not restart:
            self._epoch += 1
            self._restarts.reset()
        plan = None
        try:
            if self._planner is not None:
                # The planner checks the file(s) too, from the facts the screens already read (one
                # header parse per action); then the template, still before anything is unloaded.
                spec, plan = self._planner.prepare(spec)
                _check_template_first(spec, self._planner.chat_template(spec))
            elif spec.backend == "llama_cpp":
                try:
                    header = read_header(spec.model_path)
                except GGUFError as exc:
                    raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
                _check_template_first(spec, header.metadata.get("tokenizer.chat_template"))
            elif spec.backend == "transformers":
                # Folder checks without heavy imports: pickle-only, remote code, broken shards.
                from services.hf_repo import RepoError, inspect_repo

                try:
                    inspect_repo(spec.model_path)
                except RepoError as exc:
                    raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
                _check_template_first(spec, transformers_template_text(spec.model_path))
        except (ModelLoadError, TemplateError) as exc:
            if self.state().status != "ready":  # a loaded model stays loaded
                self._set(status="failed", error=str(exc))
            raise
        if not self._gate.acquire_exclusive(timeout=busy_timeout_s):
            raise BusyError("A reply is being generated or a model is loading; press Stop or wait, then load again.")
        self._settled.clear()
        try:
            self._set(status="loading", spec=spec, info=None, error=None, plan=None)
            if self._backend is not None and self._backend.name != spec.backend:
                self._backend.unload()
                self._backend = None
            if self._backend is None:
                self._backend = self._factory(spec.backend)
            try:
                info = self._backend.load(spec)
            except BackendError as exc:
                self._set(status="failed", info=None, error=str(exc))
                if restart and isinstance(exc, WorkerCrashed):
                    self._crashed(str(exc))  # crashed again while loading: counts towards giving up
                raise
            self._gate.set_seats(info.n_parallel)
            self._set(status="ready", info=info, error=None, plan=plan, slots=info.n_parallel)
            if self._watch is None:
                self._watch = IdleWatch(self._check_idle_worker)
            return info
        finally:
            self._settled.set()
            self._gate.release_exclusive()

    def announce(self, spec: LoadSpec) -> None:
        """Show ``spec`` as loading before its load starts (the app starts it once it serves)."""
        self._settled.clear()
        self._set(status="loading", spec=spec, info=None, error=None)

    def load_in_background(self, spec: LoadSpec) -> threading.Thread:
        self._settled.clear()  # waiters see the load as pending from this moment

        def run() -> None:
            try:
                self.load(spec, busy_timeout_s=600)
            except BackendError:
                pass  # recorded in the state for the UI
            finally:
                self._settled.set()

        thread = threading.Thread(target=run, name="model-load", daemon=True)
        thread.start()
        return thread

    def unload(self, busy_timeout_s: float = 1.0) -> None:
        if not self._gate.acquire_exclusive(timeout=busy_timeout_s):
            raise BusyError("A reply is being generated; press Stop or wait, then unload.")
        self._epoch += 1
        try:
            if self._backend is not None:
                self._backend.unload()
            self._set(status="empty", info=None, error=None, spec=None, plan=None)
        finally:
            self._gate.release_exclusive()

    def close(self) -> None:
        self._epoch += 1
        if self._watch is not None:
            self._watch.stop()
        if self._backend is not None:
            self._backend.unload()

    # -- generation ------------------------------------------------------------------------
    @property
    def max_waiting(self) -> int:
        """The most replies that may wait in line."""
        return self._turns.max_waiting

    def queue_depth(self) -> int:
        """Replies waiting in line (not counting the one being generated)."""
        return len(self._turns)

    def queue_turn(self) -> Turn:
        """A place in the line for a reply (BusyError when the line is full). Wait with
        ``turn.ready()`` (showing ``turn.ahead``), then pass it to ``stream_chat``."""
        return self._turns.join()

    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions, cancel: threading.Event,
                    wait_s: float = 600.0, turn: Optional[Turn] = None, logprobs: Optional[int] = None) -> ChatStream:
        """Start a reply (``messages``) or a raw completion (a prompt string). Without a ``turn``,
        joins the line and waits (up to ``wait_s``, or until cancelled) behind loads and other replies.
        ``logprobs``: report per-token log-probabilities with that many top tokens (``ChatStream.logprobs``)."""
        turn = turn or self._turns.join()
        try:
            self._turns.wait(turn, cancel, wait_s)
            state = self.state()
            if state.status != "ready" or self._backend is None:
                raise NotLoadedError(self._not_ready_message(state))
            asked = {} if logprobs is None else {"logprobs": logprobs}  # only backends that report them take it
            stream = self._backend.stream_chat(messages, params, cancel, **asked)
            turn.hand_over()  # the guarded stream releases the lock when the reply ends
        except WorkerCrashed as exc:  # it died while idle, before the watchdog noticed
            turn.leave()
            raise WorkerCrashed(self._crashed(str(exc))) from None
        except BaseException:
            turn.leave()
            raise
        self._live[id(stream)] = stream.progress
        self._set(generating=True, running=len(self._live))
        # A stream closed before its first item never runs its generator's cleanup: do it then too.
        return ChatStream(self._guarded(stream), stream.progress, on_unstarted_close=lambda: self._finish(stream),
                          logprobs=stream.logprobs)

    def _guarded(self, stream: ChatStream) -> Generator[str, None, GenerationStats]:
        try:
            yield from stream
            return stream.stats
        except WorkerCrashed as exc:
            raise WorkerCrashed(self._crashed(str(exc))) from None
        finally:
            self._finish(stream)

    # -- crashes ---------------------------------------------------------------------------
    def _check_idle_worker(self) -> None:
        """The watchdog's round: a worker that died while idle is noticed within a second."""
        backend = self._backend
        if self.state().status != "ready" or backend is None or not hasattr(backend, "exit_message"):
            return
        if not self._gate.acquire_exclusive(timeout=0):
            return  # a reply or a load is running: it sees the crash itself
        try:
            message = backend.exit_message() if self.state().status == "ready" else None
        finally:
            self._gate.release_exclusive()
        if message:
            self._crashed(message)

    def _crashed(self, message: str) -> str:
        """Record a crash and load the same model again after a backoff, or give up after
        ``RestartPolicy.max_crashes`` in its window. Returns the message to show."""
        spec = self.state().spec
        delay = self._restarts.after_crash(time.monotonic()) if spec is not None else None
        message = message.replace(" The model is unloaded; load it again to continue.", "")
        if delay is None:
            text = (f"{message} It crashed {self._restarts.recent} times within "
                    f"{self._restarts.window_s:.0f} s, so it is left unloaded; check its options and load it again.")
            self._set(status="failed", info=None, error=text)
            return text
        text = f"{message} FitChat loads it again in {delay:.0f} s."
        self._set(status="crashed", info=None, error=text)
        epoch = self._epoch

        def restart() -> None:
            time.sleep(delay)
            if self._epoch != epoch:
                return  # someone loaded or unloaded meanwhile
            try:
                self.load(spec, busy_timeout_s=120, restart=True)
            except BackendError:
                pass  # recorded in the state

        threading.Thread(target=restart, name="worker-restart", daemon=True).start()
        return text

    def _finish(self, stream: ChatStream) -> None:
        """The reply is over (finished, failed, or closed before it started): free the model."""
        stream.close()
        if self._live.pop(id(stream), None) is None:
            return  # finished already (closed before it started, then cleaned up again)
        if stream.stats is not None:
            self._last_stats = stream.stats
        self._set(generating=bool(self._live), running=len(self._live))
        self._gate.release_seat()
        info = self.state().info
        if self._planner is not None and info is not None and stream.stats is not None:
            # After the first decode NVML shows the worker's real VRAM: learn from it, off the
            # request path.
            threading.Thread(target=self._planner.learn, args=(info,), daemon=True).start()

    def score_text(self, text: str, opts, cancel: threading.Event, ref: Optional[dict] = None,
                   keep_top: bool = False, wait_s: float = 600.0) -> Generator[tuple, None, bool]:
        """The quality check on the loaded model (see ``WorkerBackend.score_text``). It waits in the
        same line as replies and holds the model until it ends, is stopped or is closed."""
        turn = self._turns.join()
        try:
            self._turns.wait(turn, cancel, wait_s)
            state = self.state()
            if state.status != "ready" or self._backend is None:
                raise NotLoadedError(self._not_ready_message(state))
            if not hasattr(self._backend, "score_text"):
                raise BackendError(f"The {self._backend.name} backend cannot run the quality check.")
            events = self._backend.score_text(text, opts, cancel, ref, keep_top)
            turn.hand_over()
        except BaseException:
            turn.leave()
            raise
        self._set(generating=True, running=len(self._live) + 1)
        try:
            return (yield from events)
        except WorkerCrashed as exc:
            self._set(status="crashed", info=None, error=str(exc))
            raise
        finally:
            events.close()
            self._set(generating=bool(self._live), running=len(self._live))
            self._gate.release_seat()

    @staticmethod
    def _not_ready_message(state: ManagerState) -> str:
        if state.status == "loading":
            return "The model is still loading."
        if state.status in ("failed", "crashed") and state.error:
            return f"No model is loaded. {state.error}"
        return "No model is loaded. Pick one and press Load."
