"""The remote backend against real OpenAI-compatible servers started here: llama-cpp-python's
``llama_cpp.server`` on the embedded model and a second FitChat's /v1. No protocol mocks; the
redirect cases use a plain HTTP server that answers 307, as a misconfigured proxy would."""
from __future__ import annotations

import threading
import time

import pytest

from backends.base import Backend, BackendError, LoadSpec, ModelLoadError, NotLoadedError, UnsupportedRequestError
from backends.remote_engine import RemoteBackend
from core.options import RemoteLoadOptions, SamplingOptions
from core.remote import make_endpoint
from tests.conftest import start_app
from tests.remote_servers import ALIAS, SERVER_KEY, LlamaServer, Recorder

pytestmark = pytest.mark.real_model

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
SHORT = SamplingOptions(temperature=0.0, max_tokens=12, seed=3)
LONG = SamplingOptions(temperature=0.0, max_tokens=2000, seed=3)


def backend_for(url: str, key=SERVER_KEY, **options) -> tuple[RemoteBackend, LoadSpec]:
    endpoints = {"box": make_endpoint("box", url, key)}
    backend = RemoteBackend(endpoints.get)
    return backend, LoadSpec(ALIAS, RemoteLoadOptions(endpoint="box", **options), backend="remote")


@pytest.fixture
def own_server(embedded_model):
    """A server this test may kill, pause or restart."""
    srv = LlamaServer(embedded_model)
    yield srv
    srv.stop()


def test_streams_a_reply_with_stats_measured_here(server):
    backend, spec = backend_for(server.url)
    assert isinstance(backend, Backend)
    info = backend.load(spec)
    assert info.backend == "remote" and info.name == ALIAS and info.path == f"box:{ALIAS}"
    stream = backend.stream_chat(STORY, SHORT, threading.Event())
    deltas = list(stream)
    assert len(deltas) > 3 and "".join(deltas).strip()
    stats = stream.stats
    assert stats.finish_reason == "length" and stats.completion_tokens == 12
    assert 0 < stats.ttft_s < stats.total_s and stats.decode_tokens_per_s > 0


def test_stop_closes_the_stream_and_frees_the_server(server):
    backend, spec = backend_for(server.url)
    backend.load(spec)
    cancel = threading.Event()
    stream = backend.stream_chat(STORY, LONG, cancel)
    next(stream)
    cancel.set()
    started = time.monotonic()
    list(stream)
    assert time.monotonic() - started < 1.0 and stream.stats.finish_reason == "cancelled"
    # llama_cpp.server generates one reply at a time: had the 2000-token reply gone on, this one
    # would wait behind it for tens of seconds.
    started = time.monotonic()
    text = "".join(backend.stream_chat(STORY, SHORT, threading.Event()))
    assert text and time.monotonic() - started < 10


def test_logprobs_are_refused_not_passed_through(server):
    backend, spec = backend_for(server.url)
    backend.load(spec)
    with pytest.raises(UnsupportedRequestError, match="logprobs cannot be reported by a remote engine"):
        backend.stream_chat(STORY, SHORT, threading.Event(), logprobs=2)
    assert "".join(backend.stream_chat(STORY, SHORT, threading.Event()))  # the next reply is unaffected


def test_wrong_or_missing_key_is_one_clear_message(server):
    for key, said in (("wrong-key", "refused its API key"), (None, "refused a request without an API key")):
        backend, spec = backend_for(server.url, key=key)
        with pytest.raises(ModelLoadError, match=f"{said} \\(HTTP 401\\)") as err:
            backend.load(spec)
        assert "wrong-key" not in str(err.value)
        with pytest.raises(NotLoadedError):
            backend.stream_chat(STORY, SHORT, threading.Event())


def test_model_not_served_names_what_is(server):
    backend, spec = backend_for(server.url)
    with pytest.raises(ModelLoadError, match=f"does not serve 'gone-model' \\(it lists: {ALIAS}\\)"):
        backend.load(LoadSpec("gone-model", spec.options, backend="remote"))


def test_server_down_at_start_then_up(own_server):
    backend, spec = backend_for(own_server.url)
    with pytest.raises(ModelLoadError, match="Cannot reach the remote engine 'box'.*connection refused"):
        backend.load(spec)
    own_server.start()
    assert backend.load(spec).name == ALIAS
    assert "".join(backend.stream_chat(STORY, SHORT, threading.Event()))


def test_server_killed_mid_stream_then_back(own_server):
    own_server.start()
    backend, spec = backend_for(own_server.url)
    backend.load(spec)
    stream = backend.stream_chat(STORY, LONG, threading.Event())
    kept = next(stream)
    own_server.kill()
    with pytest.raises(BackendError, match="cut mid-reply|ended before the reply did"):
        for delta in stream:
            kept += delta
    assert kept
    with pytest.raises(BackendError, match="Cannot reach"):
        list(backend.stream_chat(STORY, SHORT, threading.Event()))
    own_server.start()
    assert "".join(backend.stream_chat(STORY, SHORT, threading.Event()))  # no reload needed


def test_slow_server_times_out_then_recovers(own_server):
    own_server.start()
    backend, spec = backend_for(own_server.url, timeout_s=1.5)
    backend.load(spec)
    own_server.pause()  # the kernel still accepts the connection; nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match="sent nothing for 1.5 s \\(timeout\\)"):
            list(backend.stream_chat(STORY, SamplingOptions(max_tokens=4), threading.Event()))
        assert time.monotonic() - started < 5
    finally:
        own_server.resume()
    backend.load(LoadSpec(ALIAS, RemoteLoadOptions(endpoint="box"), backend="remote"))  # a patient timeout
    assert "".join(backend.stream_chat(STORY, SHORT, threading.Event()))


def test_redirect_to_another_host_is_not_followed():
    target = Recorder()
    redirector = Recorder(redirect_to=target.url)
    try:
        backend, spec = backend_for(redirector.url)
        with pytest.raises(ModelLoadError, match=f"redirected the request to http://127.0.0.1:{target.port}"):
            backend.load(spec)
        assert redirector.requests == [("GET", "/v1/models", f"Bearer {SERVER_KEY}")]
        assert target.requests == []  # the key never went there
    finally:
        target.close()
        redirector.close()


def test_redirect_on_the_same_server_is_followed_a_few_times():
    looping = Recorder()
    looping.redirect_to = looping.url + "/again"
    try:
        backend, spec = backend_for(looping.url)
        with pytest.raises(ModelLoadError, match="redirected more than 3 times"):
            backend.load(spec)
        assert len(looping.requests) == 4
    finally:
        looping.close()


def test_a_non_openai_server_is_named_as_such():
    plain = Recorder()
    try:
        backend, spec = backend_for(plain.url)
        with pytest.raises(ModelLoadError, match="could not answer \\(HTTP 500\\).*recorder"):
            backend.load(spec)
    finally:
        plain.close()


def test_through_a_second_fitchat(tmp_path):
    """FitChat in front of FitChat: the remote's /v1 with its own key; usage comes from it."""
    app = start_app(["--api-key", "fitchat-remote-key"], tmp_path / "remote-app")
    try:
        app.wait_model_ready()
        backend, spec = backend_for(app.url.rstrip("/"), key="fitchat-remote-key")
        info = backend.load(LoadSpec("", spec.options, backend="remote"))
        assert info.name.startswith("SmolLM2")
        stream = backend.stream_chat(STORY, SHORT, threading.Event())
        assert "".join(stream)
        assert stream.stats.prompt_tokens > 5 and stream.stats.completion_tokens == 12  # the server's usage
        cancel = threading.Event()
        stream = backend.stream_chat(STORY, LONG, cancel)
        next(stream)
        cancel.set()
        list(stream)
        assert stream.stats.finish_reason == "cancelled"
        assert "".join(backend.stream_chat("The capital of France is", SHORT, threading.Event()))
        bad, bad_spec = backend_for(app.url.rstrip("/"), key="nope")
        with pytest.raises(ModelLoadError, match="HTTP 401"):
            bad.load(bad_spec)
    finally:
        app.stop()


def test_fitchat_fronts_a_remote_engine_with_its_own_keys(server, tmp_path):
    """``app.py --remote URL``: the app's chat and /v1 go to the remote; its users use the app's key."""
    import httpx

    key_file = tmp_path / "remote.key"
    key_file.write_text(SERVER_KEY + "\n")
    app = start_app(["--remote", server.url, "--remote-key-file", str(key_file), "--api-key", "front-key-0123456789"],
                    tmp_path / "front")
    try:
        status = app.wait_model_ready()
        assert status["status"] == "ready"
        body = {"model": "", "messages": STORY, "max_tokens": 8, "temperature": 0, "stream": True}
        with httpx.stream("POST", app.url + "v1/chat/completions", json=body, timeout=60, trust_env=False,
                          headers={"Authorization": "Bearer front-key-0123456789"}) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]" and len(events) > 3
        denied = httpx.get(app.url + "v1/models", headers={"Authorization": f"Bearer {SERVER_KEY}"},
                           trust_env=False)
        assert denied.status_code == 401  # the remote's key is not a key to this app
        stored = app.data_dir / "remote_endpoints.json"
        assert oct(stored.stat().st_mode & 0o777) == "0o600"
    finally:
        output = app.stop()
    assert SERVER_KEY not in output
