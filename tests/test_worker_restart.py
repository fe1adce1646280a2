"""A killed worker comes back with the same model by itself (issue 13, hole 7); a model that
keeps crashing is left unloaded with the reason. Real worker processes, the embedded model."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from backends.base import LoadSpec, WorkerCrashed
from backends.manager import ModelManager
from backends.watchdog import RestartPolicy
from core.options import LoadOptions, SamplingOptions

pytestmark = pytest.mark.real_model
HELLO = [{"role": "user", "content": "Hi"}]
SHORT = SamplingOptions(max_tokens=4, temperature=0.0)


def test_restart_policy_backs_off_and_gives_up():
    policy = RestartPolicy(max_crashes=3, window_s=300)
    assert [policy.after_crash(t) for t in (0, 10, 20)] == [1.0, 2.0, None]
    policy = RestartPolicy(max_crashes=3, window_s=300)
    assert [policy.after_crash(t) for t in (0, 400, 800)] == [1.0, 1.0, 1.0]  # far apart: never gives up


@pytest.fixture
def manager(embedded_model):
    manager = ModelManager()
    manager.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=512)))
    yield manager
    manager.close()


def _reply_after_crash(manager, killed_at: float, limit_s: float = 15.0) -> str:
    while True:
        assert time.monotonic() - killed_at < limit_s, manager.state()
        if manager.state().status == "ready":
            try:
                return "".join(manager.stream_chat(HELLO, SHORT, threading.Event()))
            except WorkerCrashed:
                pass
        time.sleep(0.1)


def test_a_worker_killed_while_idle_is_restarted_with_the_same_model(manager, embedded_model):
    pid = manager.state().info.worker_pid
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert _reply_after_crash(manager, killed) is not None
    state = manager.state()
    assert state.info.worker_pid != pid and state.info.path == str(embedded_model)


def test_a_worker_killed_mid_reply_is_restarted(manager):
    stream = manager.stream_chat([{"role": "user", "content": "Write a very long story."}],
                                 SamplingOptions(max_tokens=2000), threading.Event())
    next(stream)
    os.kill(manager.state().info.worker_pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(WorkerCrashed, match="killed by SIGKILL.*loads it again"):
        list(stream)
    _reply_after_crash(manager, killed)


def test_a_model_that_keeps_crashing_is_left_unloaded_with_the_reason(manager):
    killed = set()
    for _ in range(3):
        deadline = time.monotonic() + 30
        while (state := manager.state()).status != "ready" or state.info.worker_pid in killed:
            assert time.monotonic() < deadline and state.status != "failed", state
            time.sleep(0.05)
        killed.add(state.info.worker_pid)
        os.kill(state.info.worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while manager.state().status != "failed":
        assert time.monotonic() < deadline, manager.state()
        time.sleep(0.05)
    time.sleep(3)  # no restart comes after giving up
    state = manager.state()
    assert state.status == "failed" and "crashed 3 times" in state.error and "left unloaded" in state.error
    assert "killed by SIGKILL" in state.error
