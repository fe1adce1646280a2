"""ModelManager: the one resident model of the app, shared by every user.

Loads, unloads and generations are serialised by one lock. A load is refused (clearly) while a
reply is being generated; a generation waits for a load in progress. Before any worker starts,
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
                           NotLoadedError, WorkerCrashed)
from core.generation import GenerationProgress, GenerationStats
from core.gguf_header import GGUFError
from core.options import SamplingOptions
from core.plan import Plan
from services.gguf_file import read_header

Status = Literal["empty", "loading", "ready", "failed", "crashed"]


class BusyError(BackendError):
    kind = "busy"

    def __init__(self, message: str, ahead: int = 0, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.ahead = ahead
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ManagerState:
    status: Status
    spec: Optional[LoadSpec] = None
    info: Optional[ModelInfo] = None
    error: Optional[str] = None
    generating: bool = False
    plan: Optional[Plan] = None  # the planner's prediction for the loaded model


class LoadPlannerHook(Protocol):
    def prepare(self, spec: LoadSpec) -> tuple[LoadSpec, Optional[Plan]]: ...

    def learn(self, info: ModelInfo) -> object: ...


def _default_factory(name: str) -> Backend:
    from backends.worker_client import WorkerBackend

    return WorkerBackend(name)


class ModelManager:
    def __init__(self, backend_factory: Callable[[str], Backend] = _default_factory,
                 planner: Optional[LoadPlannerHook] = None, max_waiting: int = 8) -> None:
        self._factory = backend_factory
        self._planner = planner
        self._max_waiting = max_waiting
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._backend: Optional[Backend] = None
        self._busy = threading.Lock()
        self._state = ManagerState("empty")
        self._state_lock = threading.Lock()
        self._settled = threading.Event()
        self._settled.set()
        self._live: Optional[GenerationProgress] = None
        self._last_stats: Optional[GenerationStats] = None

    def state(self) -> ManagerState:
        with self._state_lock:
            return self._state

    def _set(self, **changes) -> None:
        with self._state_lock:
            self._state = ManagerState(**{**self._state.__dict__, **changes})

    def generation(self) -> tuple[Optional[GenerationProgress], Optional[GenerationStats]]:
        """A copy of the reply in progress (None when idle) and the stats of the last finished one.
        Cheap: reads two fields, never touches the worker (safe to poll from a UI timer)."""
        live = self._live
        return (dataclasses.replace(live) if live is not None else None), self._last_stats

    def wait_settled(self, timeout: Optional[float] = None) -> bool:
        """Wait until no load is in progress."""
        return self._settled.wait(timeout)

    # -- load / unload ---------------------------------------------------------------------
    def load(self, spec: LoadSpec, busy_timeout_s: float = 1.0) -> ModelInfo:
        plan = None
        try:
            if spec.backend == "llama_cpp":
                try:
                    read_header(spec.model_path)
                except GGUFError as exc:
                    raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
            elif spec.backend == "transformers":
                # Folder checks without heavy imports: pickle-only, remote code, broken shards.
                from services.hf_repo import RepoError, inspect_repo

                try:
                    inspect_repo(spec.model_path)
                except RepoError as exc:
                    raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
            if self._planner is not None:
                spec, plan = self._planner.prepare(spec)
        except ModelLoadError as exc:
            if self.state().status != "ready":  # a loaded model stays loaded
                self._set(status="failed", error=str(exc))
            raise
        if not self._busy.acquire(timeout=busy_timeout_s):
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
                raise
            self._set(status="ready", info=info, error=None, plan=plan)
            return info
        finally:
            self._settled.set()
            self._busy.release()

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
        if not self._busy.acquire(timeout=busy_timeout_s):
            raise BusyError("A reply is being generated; press Stop or wait, then unload.")
        try:
            if self._backend is not None:
                self._backend.unload()
            self._set(status="empty", info=None, error=None, spec=None, plan=None)
        finally:
            self._busy.release()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.unload()

    # -- generation ------------------------------------------------------------------------
    def queue_depth(self) -> int:
        with self._waiting_lock:
            return self._waiting

    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions, cancel: threading.Event,
                    wait_s: float = 600.0) -> ChatStream:
        """Start a reply (``messages``) or a raw completion (a prompt string); waits (up to ``wait_s``,
        or until cancelled) for a load or another reply, behind at most ``max_waiting`` others."""
        with self._waiting_lock:
            if self._waiting >= self._max_waiting:
                raise BusyError(f"Busy: {self._waiting} requests are ahead of you; try again shortly.",
                                ahead=self._waiting, retry_after_s=5 * self._waiting)
            self._waiting += 1
        try:
            deadline = time.monotonic() + wait_s
            while not self._busy.acquire(timeout=0.1):
                if cancel.is_set():
                    raise BusyError("Cancelled while waiting for the model.")
                if time.monotonic() > deadline:
                    raise BusyError("The model stayed busy; try again.")
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            state = self.state()
            if state.status != "ready" or self._backend is None:
                raise NotLoadedError(self._not_ready_message(state))
            stream = self._backend.stream_chat(messages, params, cancel)
        except BaseException:
            self._busy.release()
            raise
        self._live = stream.progress
        self._set(generating=True)
        return ChatStream(self._guarded(stream), stream.progress)

    def _guarded(self, stream: ChatStream) -> Generator[str, None, GenerationStats]:
        try:
            yield from stream
            return stream.stats
        except WorkerCrashed as exc:
            self._set(status="crashed", info=None, error=str(exc))
            raise
        finally:
            stream.close()
            self._live = None
            if stream.stats is not None:
                self._last_stats = stream.stats
            self._set(generating=False)
            self._busy.release()
            info = self.state().info
            if self._planner is not None and info is not None and stream.stats is not None:
                # After the first decode NVML shows the worker's real VRAM: learn from it, off the
                # request path.
                threading.Thread(target=self._planner.learn, args=(info,), daemon=True).start()

    @staticmethod
    def _not_ready_message(state: ManagerState) -> str:
        if state.status == "loading":
            return "The model is still loading."
        if state.status in ("failed", "crashed") and state.error:
            return f"No model is loaded. {state.error}"
        return "No model is loaded. Pick one and press Load."
