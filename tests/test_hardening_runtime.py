"""Hardening, of the running app and its model worker (docs/HARDENING.md lines 4, 11, 12, 13 and 15):
hostile names through every name-taking endpoint, parameter fuzzing, a worker killed mid-reply, an
allocation that fails, load/unload cycles, a model switch during a reply and a full queue."""
from __future__ import annotations

import math
import os
import signal
import stat
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client
from hypothesis import HealthCheck, given, settings, strategies as st

from backends.base import BackendError, LoadSpec, ModelLoadError
from backends.manager import ModelManager
from backends.worker_client import WorkerBackend
from core.openai_schema import ApiRequestError, ChatCompletionRequest, parse_request
from core.options import LoadOptions, SamplingOptions
from services.hardware import probe
from backends.load_planning import LoadPlanner
from tests.conftest import ROOT, use_hardening_app
from ui import chat_handlers as h

pytestmark = pytest.mark.real_model
EMBEDDED = "SmolLM2-135M-Instruct Q4_1 (embedded)"
LOAD_DEFAULTS = [2048, None, "f16", True, None, 512]
HOSTILE = ["../../../etc/passwd", "/etc/passwd", "..\\..\\x.gguf", "a\x00b.gguf", "outside-link.gguf",
           "models/../../outside.gguf", "%2e%2e%2fetc%2fpasswd", "", "x" * 300, "C:\\Windows\\win.ini"]


def send_args(text: str, **changes) -> list:
    values = {**SamplingOptions().model_dump(), "stop": "", "seed": None, **changes}
    return [text, "", *[values[k] for k in SamplingOptions.model_fields]]


def last_reply(display: list[dict]) -> str:
    content = display[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


@pytest.fixture(scope="module")
def app(hardening_app):
    """The shared hardening app (tests/conftest.py): a sentinel model outside its library and a
    symlink to it inside."""
    return use_hardening_app(hardening_app, __name__)


@pytest.fixture(scope="module")
def client(app) -> Client:
    return app.client()


def worker_children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "backends.worker_main" in " ".join(p.cmdline())]


def wait_ready(client: Client, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (status := client.predict(api_name="/model_status"))["status"] != "ready":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


# -- line 4: every name-taking endpoint, called directly ------------------------------------------
NAME_ENDPOINTS = {  # endpoint: the arguments around the name
    "/load_model": ((), LOAD_DEFAULTS), "/load_library_model": ((), ()), "/reveal_model": ((), ()),
    "/ask_delete": ((), ()), "/delete_model": ((), ()), "/load_preset": ((), ("Fastest",)), "/rank_presets": ((), ("Fastest",)),
    "/open_repo": ((), ()), "/download": ((), ()),
}


def test_hostile_names_are_refused_by_every_name_taking_endpoint(app):
    before = app.outside.read_bytes()
    for endpoint, (head, tail) in NAME_ENDPOINTS.items():
        client = app.client()  # one per endpoint: a refusal ends nothing but that call
        for name in HOSTILE:
            job = client.submit(*head, name, *tail, api_name=endpoint)
            try:
                text = str(job.result(timeout=30))
            except TimeoutError:
                raise AssertionError(f"{endpoint} did not answer {name[:40]!r}") from None
            except Exception as exc:  # refused: what it said must not leak a file
                text = str(exc)
            assert str(app.outside) not in text and "root:x:" not in text, (endpoint, name, text[:300])
            assert "Ready" not in text, (endpoint, name, text[:300])  # nothing got loaded by a hostile name
    big = "x" * 100_000  # and a name too long to be one, sent raw: refused, the app serves on
    config = httpx.get(app.url + "config", timeout=10).json()
    for dep, fn in ((d, i) for i, d in enumerate(config["dependencies"]) if "/" + str(d.get("api_name")) in NAME_ENDPOINTS):
        r = httpx.post(app.url + "gradio_api/run/predict", timeout=30,
                       json={"data": [big] * len(dep["inputs"]), "fn_index": fn, "session_hash": "hostile-1"})
        assert r.status_code in (200, 400, 422, 500) and "root:x:" not in r.text
    assert app.outside.read_bytes() == before  # neither read into a model nor deleted
    client = app.client()
    assert "outside-link" not in str(client.predict(api_name="/library"))  # the symlink is not in the library
    assert wait_ready(client)["model"] == EMBEDDED  # and the app still serves its model


# -- line 11: parameters, fuzzed -----------------------------------------------------------------
_numbers = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([None, "", "1e400", "nan", "-1", True, [], {}]), st.text(max_size=8))


def _in_range(options: SamplingOptions) -> bool:
    values = options.model_dump()
    finite = all(math.isfinite(v) for v in values.values() if isinstance(v, float))
    return finite and 0 <= options.temperature <= 5 and 0 < options.top_p <= 1 and 0 <= options.top_k <= 1000 \
        and 1 <= options.max_tokens <= 131072 and (options.seed is None or 0 <= options.seed < 2**32)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({name: _numbers for name in h.SAMPLING_FIELDS if name != "stop"}),
       st.one_of(st.text(max_size=300), st.none(), st.integers()))
def test_any_sampling_values_are_rejected_or_within_range(values, stop):
    """What the chat endpoints call first with the client's values, before any model is touched."""
    row = [stop if name == "stop" else values[name] for name in h.SAMPLING_FIELDS]
    try:
        options = h.parse_sampling(row)
    except Exception as exc:
        assert type(exc).__name__ == "Error", exc  # gr.Error: a message for the UI, nothing else
        return
    assert _in_range(options), options


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "temperature": _numbers, "top_p": _numbers, "max_tokens": _numbers, "seed": _numbers, "n": _numbers,
    "stop": st.one_of(st.text(max_size=80), st.lists(st.text(max_size=80), max_size=12), _numbers),
    "stream": st.one_of(st.booleans(), _numbers), "frequency_penalty": _numbers, "top_k": _numbers}))
def test_any_api_body_is_rejected_or_within_range(extra):
    body = {"model": "any", "messages": [{"role": "user", "content": "hi"}], **extra}
    try:
        request = parse_request(ChatCompletionRequest, body)
        options = request.sampling()
    except ApiRequestError:
        return
    assert _in_range(options), (body, options)


def test_absurd_sizes_are_refused_before_any_worker_starts(tmp_path):
    from tools.synth_gguf import write

    with pytest.raises(Exception, match="less than or equal"):
        LoadOptions(n_ctx=10**7)  # beyond any model: the options themselves refuse it
    huge = write(tmp_path / "llama31-70b-Q4_K_M.gguf", "llama31-70b", "Q4_K_M", None, True)  # 40 GiB, sparse
    manager = ModelManager(planner=LoadPlanner(tmp_path, probe))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ModelLoadError, match="will not fit"):
        manager.load(LoadSpec(str(huge), LoadOptions(n_ctx=131072)))
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # nothing was started
    assert manager.state().status == "failed"


# -- line 12: a worker killed mid-reply, and an allocation that fails -------------------------------
def test_worker_killed_mid_reply_is_reported_and_the_app_recovers(app, client):
    wait_ready(client)
    job = client.submit(*send_args("Write a very long story about a storm.", max_tokens=3000), api_name="/send")
    deadline = time.monotonic() + 30
    while not client.predict(api_name="/model_status")["generating"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    (worker,) = worker_children(app.proc.pid)
    os.kill(worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    final = job.result(timeout=30)[0]
    assert "killed by SIGKILL" in last_reply(final) and "loads it again" in last_reply(final)
    # The worker comes back with the same model by itself (tests/test_worker_restart.py), no Load needed.
    while client.predict(api_name="/model_status")["status"] != "ready":
        assert time.monotonic() - killed < 15
        time.sleep(0.2)
    assert "tok/s" in last_reply(client.predict(*send_args("Hi!", max_tokens=4), api_name="/send")[0])
    assert "Ready" in client.predict(EMBEDDED, *LOAD_DEFAULTS, api_name="/load_model")  # Load still works


@pytest.fixture
def capped_python(tmp_path) -> str:
    """The worker's interpreter under a 1.5 GiB address-space cap: a bigger model cannot be mapped."""
    wrapper = tmp_path / "python-capped"
    wrapper.write_text(f"#!/bin/sh\nulimit -v {3 * 512 * 1024}\nexec {os.sys.executable} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def test_allocation_failure_in_the_worker_is_a_clear_error_and_the_next_load_works(tmp_path, capped_python,
                                                                                     embedded_model):
    from tools.synth_gguf import write

    big = write(tmp_path / "llama31-8b-Q4_K_M.gguf", "llama31-8b", "Q4_K_M", None, True)  # 4.6 GiB, sparse
    manager = ModelManager(backend_factory=lambda name: WorkerBackend(name, python=capped_python))
    with pytest.raises(BackendError) as err:
        manager.load(LoadSpec(str(big), LoadOptions(n_ctx=2048, n_gpu_layers=0)))
    assert "llama31-8b-Q4_K_M.gguf" in str(err.value) or "worker" in str(err.value)
    assert manager.state().status == "failed" and manager.state().error
    info = manager.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=1024)))
    reply = "".join(manager.stream_chat([{"role": "user", "content": "Hi"}], SamplingOptions(max_tokens=4),
                                        threading.Event()))
    assert info.worker_pid and reply
    manager.close()


# -- line 13: load and unload five times ---------------------------------------------------------
def test_load_unload_five_times_leaves_no_worker_and_no_growth(app, client):
    server = psutil.Process(app.proc.pid)
    rss = []
    for _ in range(5):
        assert "Ready" in client.predict(EMBEDDED, *LOAD_DEFAULTS, api_name="/load_model")
        assert len(worker_children(app.proc.pid)) == 1
        client.predict(api_name="/unload_model")
        deadline = time.monotonic() + 10
        while worker_children(app.proc.pid):
            assert time.monotonic() < deadline, "the worker outlived its unload"
            time.sleep(0.1)
        rss.append(server.memory_info().rss)
    assert rss[-1] - rss[1] < 32 << 20, [r >> 20 for r in rss]  # after one warm-up cycle: flat
    assert "Ready" in client.predict(EMBEDDED, *LOAD_DEFAULTS, api_name="/load_model")


# -- line 15: a model switch during a reply; a full line ------------------------------------------
def test_model_switch_during_a_reply_is_refused_and_the_reply_finishes(app, client):
    wait_ready(client)
    # Greedy: this prompt runs to its 600-token limit (about 9 s here), so the load below always
    # arrives while the reply is being generated.
    job = client.submit(*send_args("Write a very long story about a lighthouse keeper.", max_tokens=600,
                                   temperature=0.0, seed=1), api_name="/send")
    while not client.predict(api_name="/model_status")["generating"]:
        time.sleep(0.05)
    status = client.predict(EMBEDDED, *LOAD_DEFAULTS, api_name="/load_model")
    assert "A reply is being generated" in status
    final = last_reply(job.result(timeout=120)[0])
    assert "tok/s" in final and "<sub>Error:" not in final  # the footer, not the story's words


def test_a_full_line_refuses_with_the_count_and_waiting_replies_see_their_place(app):
    wait_ready(app.client())
    long_client = app.client()
    long_job = long_client.submit(*send_args("Write a very long story.", max_tokens=3000), api_name="/send")
    while not long_client.predict(api_name="/model_status")["generating"]:
        time.sleep(0.05)
    waiting = []
    for _ in range(8):  # the most that may wait
        client = app.client()
        waiting.append(client.submit(*send_args("Say yes.", max_tokens=2), api_name="/send"))
    deadline = time.monotonic() + 30
    while long_client.predict(api_name="/model_status").get("waiting", 0) < 8:
        assert time.monotonic() < deadline, "the replies did not all join the line"
        time.sleep(0.1)
    refused = app.client().predict(*send_args("One too many.", max_tokens=2), api_name="/send")[0]
    assert "Busy: 9 requests are ahead of you" in last_reply(refused)
    long_client.predict(api_name="/stop")
    assert last_reply(long_job.result(timeout=30)[0]).endswith(" · stopped</sub>")
    finals = [last_reply(job.result(timeout=120)[0]) for job in waiting]
    assert all("tok/s" in text for text in finals), finals
    shown = [str(out) for job in waiting for out in job.outputs()]
    assert any("ahead of you" in text for text in shown)
