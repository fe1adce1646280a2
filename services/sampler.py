"""The Resources sampler: one background thread per app that takes a ``ResourceSample`` every
second while at least one browser has the Resources tab open, and keeps the last five minutes.

A browser "watches" by renewing a short lease on every panel tick; the thread parks (no CPU at all)
when no lease is alive: the tab was left, the page was hidden or closed. The thread starts on the
first watch. It reads the model manager only through cheap getters (``generation()``, ``state()``)
and never touches the worker or the generation path.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from core.resources import GenerationSample, ResourceSample, SampleHistory, generation_sample
from services.nvml_source import GpuSource, NvmlSource
from services.system_source import SystemSource


class ResourceSampler:
    def __init__(self, system: Optional[SystemSource], gpu: Optional[GpuSource],
                 generation: Callable[[], GenerationSample] = GenerationSample,
                 worker_pid: Callable[[], Optional[int]] = lambda: None,
                 interval_s: float = 1.0, history_s: float = 300.0, lease_s: float = 4.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 app_pid: Optional[int] = None) -> None:
        self._system, self._gpu = system, gpu
        self._generation, self._worker_pid = generation, worker_pid
        self.interval_s, self.lease_s, self.history_s = interval_s, lease_s, history_s
        self._clock, self._wall = clock, wall
        self.app_pid = app_pid or os.getpid()
        self._history = SampleHistory(history_s, interval_s)
        self._lock = threading.Lock()
        self._viewers: dict[str, float] = {}  # viewer -> lease end (clock seconds)
        self._left: dict[str, None] = {}      # viewers that left the tab (until they open it again)
        self._wake = threading.Event()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._gpu_opened = False
        self.gpu_note = "not sampled yet"
        self.ticks = 0
        self.cpu_s = 0.0  # CPU time spent sampling (thread time), over ``ticks`` samples

    # -- viewers ---------------------------------------------------------------------------
    def watch(self, viewer: str, lease_s: Optional[float] = None, unless_left: bool = False) -> None:
        """A browser shows the panel: sample for the next ``lease_s`` seconds (renewed each tick).
        ``unless_left``: ignored if this viewer has left since (a timer tick that was in flight when
        its tab was left must not start sampling again)."""
        with self._lock:
            if self._closed or (unless_left and viewer in self._left):
                return
            self._left.pop(viewer, None)
            self._viewers[viewer] = self._clock() + (lease_s or self.lease_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
                self._thread.start()
        self._wake.set()

    def unwatch(self, viewer: str) -> None:
        with self._lock:
            self._viewers.pop(viewer, None)
            self._left[viewer] = None
            if len(self._left) > 1000:  # an ordered set of recent leavers, bounded
                del self._left[next(iter(self._left))]

    def viewers(self) -> int:
        now = self._clock()
        with self._lock:
            for viewer in [v for v, end in self._viewers.items() if end <= now]:
                del self._viewers[viewer]
            return len(self._viewers)

    # -- sampling --------------------------------------------------------------------------
    def sample_once(self) -> ResourceSample:
        """Take one sample (on the caller's thread), add it to the history and return it."""
        started = time.thread_time()
        errors: list[str] = []
        if not self._gpu_opened:
            self._gpu_opened = True
            self.gpu_note = self._open_gpu()
        worker_pid = self._guard(errors, "model", self._worker_pid)
        system = self._guard(errors, "system", self._system.sample, worker_pid) if self._system else None
        gpus = ()
        if self._gpu is not None and not self.gpu_note:
            result = self._guard(errors, "GPU", self._gpu.sample, worker_pid, self.app_pid)
            if result is not None:
                gpus, gpu_errors = result
                errors.extend(gpu_errors)
        generation = self._guard(errors, "generation", self._generation) or GenerationSample()
        cost = time.thread_time() - started
        with self._lock:
            self.ticks += 1
            self.cpu_s += cost
            sample = ResourceSample(self.ticks, self._wall(), system, tuple(gpus), self.gpu_note, generation,
                                    worker_pid, tuple(errors), cost_ms=1000 * cost)
            self._history.append(sample)
        return sample

    def _open_gpu(self) -> str:
        if self._gpu is None:
            return "CPU only: GPU sampling is off."
        try:
            return self._gpu.open()
        except Exception as exc:  # a broken driver binding leaves the CPU figures working
            return f"CPU only: the GPU source failed to start ({type(exc).__name__}: {exc})."

    @staticmethod
    def _guard(errors: list[str], what: str, fn: Callable, *args):
        try:
            return fn(*args)
        except Exception as exc:  # reported in the sample; the next tick tries again
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return None

    def _run(self) -> None:
        next_at = self._clock()
        while not self._closed:
            if not self.viewers():
                self._wake.clear()
                if not self.viewers() and not self._closed:
                    self._wake.wait()
                next_at = self._clock()
                continue
            self.sample_once()
            next_at += self.interval_s
            now = self._clock()
            if next_at < now:  # fell behind (a slow driver call, a suspended machine): skip ahead
                next_at = now + self.interval_s
            self._wake.clear()
            self._wake.wait(next_at - now)  # a watch() wakes it early only to re-check viewers
            if self._clock() < next_at and not self._closed:
                time.sleep(max(0.0, next_at - self._clock()))

    # -- reading ---------------------------------------------------------------------------
    def samples(self) -> tuple[ResourceSample, ...]:
        """The last five minutes, oldest first."""
        with self._lock:
            return self._history.recent()

    def status(self) -> dict:
        """Cheap facts for tests and benchmarks: ticks so far, viewers, the GPU note, CPU per tick."""
        running = bool(self._thread and self._thread.is_alive())
        return {"ticks": self.ticks, "viewers": self.viewers(), "running": running,
                "gpu_note": self.gpu_note, "interval_s": self.interval_s,
                "cpu_ms_per_tick": 1000 * self.cpu_s / self.ticks if self.ticks else None}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._viewers.clear()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._gpu is not None:
            self._gpu.close()


def for_manager(manager, gpu: Optional[GpuSource] = None, **kwargs) -> ResourceSampler:
    """The app's sampler: psutil for the system, NVML for GPUs, the model manager for the rest."""
    system = SystemSource()

    def worker_pid() -> Optional[int]:
        info = manager.state().info
        return info.worker_pid if info is not None else None

    return ResourceSampler(system, gpu if gpu is not None else NvmlSource(process_name=system.process_name),
                           generation=lambda: generation_sample(*manager.generation()),
                           worker_pid=worker_pid, **kwargs)
