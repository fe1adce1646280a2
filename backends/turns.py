"""The queue of replies waiting for the one model: first come, first served, bounded, and able to
say how many are ahead of you.

Every reply, from the web UI or the API, takes a ``Turn``. A turn waits in line; when it is first
and the model's lock is free it takes the lock ("holding") and hands it to the reply's stream,
which releases it when the reply ends. Leaving (a closed page, a disconnected client, Stop) takes
the turn out of the line at once. Loads and unloads take the same lock without queueing: they wait
for the reply in progress, not for the line.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Iterator
from backends.base import BackendError


class BusyError(BackendError):
    kind = "busy"

    def __init__(self, message: str, ahead: int = 0, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.ahead = ahead
        self.retry_after_s = retry_after_s


class Turn:
    """One reply's place in the line. Use as a context manager: leaving the block leaves the line,
    or gives the lock back if it was taken and never handed to a stream."""

    def __init__(self, line: "TurnQueue") -> None:
        self._line = line
        self.state = "waiting"  # waiting -> holding -> streaming | left

    @property
    def ahead(self) -> int:
        """Replies before this one: those earlier in the line, plus the one the model is busy with."""
        return self._line.ahead_of(self)

    def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for this turn; True once it holds the model."""
        return self._line.take(self, timeout)

    def waiting(self, cancel: threading.Event, wait_s: float, poll_s: float = 0.1) -> Iterator[int]:
        """See ``TurnQueue.waiting``: the places ahead while this turn waits for the model."""
        return self._line.waiting(self, cancel, wait_s, poll_s)

    def hand_over(self) -> None:
        """The lock now belongs to a stream, which releases it when the reply ends."""
        self.state = "streaming"

    def leave(self) -> None:
        self._line.leave(self)

    def __enter__(self) -> "Turn":
        return self

    def __exit__(self, *exc) -> None:
        self.leave()


class TurnQueue:
    def __init__(self, lock: threading.Lock, max_waiting: int) -> None:
        self._lock = lock  # the model's lock, shared with load and unload
        self._max_waiting = max_waiting
        self._cond = threading.Condition()
        self._line: deque[Turn] = deque()

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    def __len__(self) -> int:
        with self._cond:
            return len(self._line)

    def join(self) -> Turn:
        """A place at the end of the line, or BusyError when ``max_waiting`` are already waiting."""
        with self._cond:
            waiting = len(self._line)
            if waiting >= self._max_waiting:
                ahead = waiting + (1 if self._lock.locked() else 0)
                raise BusyError(f"Busy: {ahead} requests are ahead of you, the most this app queues. "
                                "Try again in a minute.", ahead=ahead, retry_after_s=min(60, 5 * ahead))
            turn = Turn(self)
            self._line.append(turn)
            return turn

    def ahead_of(self, turn: Turn) -> int:
        with self._cond:
            before = self._line.index(turn) if turn in self._line else 0
        return before + (1 if self._lock.locked() and turn.state == "waiting" else 0)

    def take(self, turn: Turn, timeout: float) -> bool:
        if turn.state != "waiting":
            return turn.state == "holding"
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._line and self._line[0] is turn):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or turn not in self._line:
                    return False
                self._cond.wait(remaining)
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        with self._cond:
            self._line.popleft()
            turn.state = "holding"
            self._cond.notify_all()  # everyone moves up one
        return True

    def leave(self, turn: Turn) -> None:
        with self._cond:
            if turn in self._line:
                self._line.remove(turn)
                self._cond.notify_all()
            elif turn.state == "holding":
                self._lock.release()
            if turn.state != "streaming":
                turn.state = "left"

    def waiting(self, turn: Turn, cancel: threading.Event, wait_s: float, poll_s: float = 0.1) -> Iterator[int]:
        """Wait for ``turn``, yielding how many are ahead after every ``poll_s`` without it; ends once
        it holds the model. BusyError on ``cancel`` or after ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while not turn.ready(poll_s):
            if cancel.is_set():
                raise BusyError("Cancelled while waiting for the model.")
            if time.monotonic() > deadline:
                raise BusyError(f"The model stayed busy for {wait_s / 60:.0f} minutes; try again.")
            yield self.ahead_of(turn)

    def wait(self, turn: Turn, cancel: threading.Event, wait_s: float, poll_s: float = 0.1) -> None:
        for _ in self.waiting(turn, cancel, wait_s, poll_s):
            pass
