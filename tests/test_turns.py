"""The line of replies waiting for the model: first come first served, bounded, positions, leaving."""
from __future__ import annotations

import threading
import time

import pytest

from backends.turns import BusyError, TurnQueue


def test_first_come_first_served_with_positions():
    lock = threading.Lock()
    line = TurnQueue(lock, max_waiting=4)
    lock.acquire()  # a reply is being generated
    turns = [line.join() for _ in range(3)]
    assert [t.ahead for t in turns] == [1, 2, 3]
    assert not turns[1].ready(0.05)  # not first: cannot take the model even when it frees
    lock.release()
    assert not turns[1].ready(0.05)
    assert turns[0].ready(1.0) and turns[0].state == "holding"
    assert [t.ahead for t in turns[1:]] == [1, 2]  # they moved up behind the one that holds the model
    turns[0].leave()  # never streamed: the lock comes back
    assert not lock.locked()
    assert turns[1].ready(1.0)
    turns[1].hand_over()
    turns[1].leave()  # a stream owns the lock now: leaving must not release it
    assert lock.locked()


def test_full_line_is_refused_with_the_count_ahead():
    lock = threading.Lock()
    line = TurnQueue(lock, max_waiting=2)
    lock.acquire()
    line.join(), line.join()
    with pytest.raises(BusyError) as err:
        line.join()
    assert err.value.ahead == 3 and "3 requests are ahead of you" in str(err.value)
    assert err.value.retry_after_s == 15


def test_leaving_the_line_lets_the_next_in_at_once():
    lock = threading.Lock()
    line = TurnQueue(lock, max_waiting=4)
    lock.acquire()
    first, second = line.join(), line.join()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: second.ready(5.0) and got.set())
    waiter.start()
    first.leave()  # a disconnected client
    lock.release()
    waiter.join(2.0)
    assert got.is_set() and len(line) == 0


def test_wait_gives_up_on_cancel_and_keeps_the_line_clean():
    lock = threading.Lock()
    line = TurnQueue(lock, max_waiting=4)
    lock.acquire()
    cancel = threading.Event()
    turn = line.join()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(BusyError, match="Cancelled"):
        with turn:
            line.wait(turn, cancel, wait_s=30, poll_s=0.05)
    assert time.monotonic() - started < 1.0
    assert len(line) == 0 and turn.state == "left"


def test_many_threads_are_served_in_arrival_order():
    lock = threading.Lock()
    line = TurnQueue(lock, max_waiting=16)
    lock.acquire()
    served: list[int] = []
    turns = [line.join() for _ in range(10)]

    def run(i: int) -> None:
        with turns[i] as turn:
            line.wait(turn, threading.Event(), wait_s=10, poll_s=0.01)
            served.append(i)
        # left while holding: the lock is released for the next

    threads = [threading.Thread(target=run, args=(i,)) for i in reversed(range(10))]
    for t in threads:
        t.start()
    lock.release()
    for t in threads:
        t.join(5)
    assert served == list(range(10))
