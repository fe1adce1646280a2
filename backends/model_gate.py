"""Who may use the one loaded model: up to ``seats`` replies at once (the engine's parallel slots),
or one load/unload alone.

Replies take a seat; a load or unload takes the whole gate once every seat is free, and while it
waits no new seat is given out (a load is not starved by a stream of replies). ``seat`` is a
lock-like view for ``backends.turns.TurnQueue``: ``acquire`` takes a seat, ``locked`` says that no
seat is free, so the line in front of the model and the place it shows work for any number of seats.
"""
from __future__ import annotations

import threading
import time
from typing import Optional


class ModelGate:
    def __init__(self, seats: int = 1) -> None:
        self._cond = threading.Condition()
        self._seats = max(1, seats)
        self._taken = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self.seat = _SeatView(self)

    @property
    def seats(self) -> int:
        return self._seats

    def set_seats(self, seats: int) -> None:
        with self._cond:
            self._seats = max(1, seats)
            self._cond.notify_all()

    def running(self) -> int:
        """Seats taken (replies running)."""
        return self._taken

    def full(self) -> bool:
        return self._exclusive or self._exclusive_waiting > 0 or self._taken >= self._seats

    def acquire_seat(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.full():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._taken += 1
            return True

    def release_seat(self) -> None:
        with self._cond:
            if self._taken <= 0:
                raise RuntimeError("release of a seat that was not taken")
            self._taken -= 1
            self._cond.notify_all()

    def acquire_exclusive(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._exclusive_waiting += 1
            try:
                while self._exclusive or self._taken:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                self._exclusive = True
                return True
            finally:
                self._exclusive_waiting -= 1
                self._cond.notify_all()

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


class _SeatView:
    """The gate as the lock ``TurnQueue`` expects."""

    def __init__(self, gate: ModelGate) -> None:
        self._gate = gate

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking:
            timeout = 0
        return self._gate.acquire_seat(None if timeout is None or timeout < 0 else timeout)

    def release(self) -> None:
        self._gate.release_seat()

    def locked(self) -> bool:
        return self._gate.full()
