"""Bring a crashed worker back with the same model, a bounded number of times.

After a crash (``kill -9``, an out-of-memory kill, a native abort), whether during a reply or while
idle, the manager loads the same spec again after a short backoff (1 s, 2 s, 4 s). A model that
crashes ``max_crashes`` times within ``window_s`` is left unloaded with the reason, so a model that
kills its worker on every load cannot loop forever.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class RestartPolicy:
    max_crashes: int = 3
    window_s: float = 300.0
    first_backoff_s: float = 1.0
    max_backoff_s: float = 8.0
    _crashes: list = field(default_factory=list)

    def after_crash(self, now: float) -> Optional[float]:
        """Seconds to wait before the restart, or None: give up."""
        self._crashes = [t for t in self._crashes if now - t < self.window_s] + [now]
        n = len(self._crashes)
        if n >= self.max_crashes:
            return None
        return min(self.max_backoff_s, self.first_backoff_s * 2 ** (n - 1))

    @property
    def recent(self) -> int:
        return len(self._crashes)

    def reset(self) -> None:
        self._crashes = []


class IdleWatch:
    """A daemon thread that calls ``check()`` every ``period_s`` until ``stop()``."""

    def __init__(self, check: Callable[[], None], period_s: float = 0.5) -> None:
        self._check = check
        self._period_s = period_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._period_s):
            try:
                self._check()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any one check
                print(f"fitchat: worker watchdog: {type(exc).__name__}: {exc}", flush=True)

    def stop(self) -> None:
        self._stopped.set()
