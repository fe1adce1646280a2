"""/v1 against bad clients (issue 13): clients that hang up on a whole (non-streamed) reply,
bodies larger than the cap (declared or chunked), and requests that used to be bare 500s."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from core.chat_history import MAX_MESSAGE_CHARS
from tests.conftest import use_hardening_app

pytestmark = pytest.mark.real_model
COUNTING = "Count from 1 to 5000, separated by commas: 1, 2, 3, 4, 5, 6,"


@pytest.fixture(scope="module")
def app(hardening_app):
    """The shared hardening app (its memory is checked after the suite: test_memory_bound.py)."""
    return use_hardening_app(hardening_app, __name__, n_ctx=4096)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_whole_reply_stops_when_its_client_hangs_up(app):
    client = app.client()
    warm = httpx.post(app.url + "v1/completions", json={"prompt": COUNTING, "max_tokens": 8}, timeout=120)
    assert warm.status_code == 200  # the model's pages are in memory before the clock starts
    for _ in range(3):  # the first generates, the others wait in line; all hang up after 0.5 s
        with pytest.raises(httpx.TimeoutException):
            httpx.post(app.url + "v1/completions", timeout=0.5,
                       json={"prompt": COUNTING, "max_tokens": 3000, "temperature": 0})
    hung_up = time.monotonic()
    # Without the fix the 3 × 3000 tokens hold the model for minutes. The target is 2 s (0.7-1.5 s
    # measured with the CPU shared 5 ways); the bound leaves room for a loaded CI machine.
    while (status := client.predict(api_name="/model_status"))["generating"] or status["waiting"]:
        assert time.monotonic() - hung_up < 8.0, (status["generating"], status["waiting"])
        time.sleep(0.05)
    r = httpx.post(app.url + "v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None


@pytest.mark.parametrize("body, reason", [
    ({"messages": [{"role": "user", "content": "a\u0000b"}]}, "NUL"),
    ({"messages": [{"role": "user", "content": "a" * (MAX_MESSAGE_CHARS + 1)}]}, "the limit is"),
    # A trailing assistant message with text is continued (issue 15's Continue); an empty one is a 400.
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}, "must have text"),
    ({"messages": [{"role": "user", "content": "hello world " * 5000}]}, "context holds"),
    (b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
], ids=["nul", "too-long", "assistant-last", "over-context", "deep-json"])
def test_bad_requests_are_json_400s_with_a_reason(app, body, reason):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    mark = app.lines_seen  # the app is shared: only what this request printed counts
    r = httpx.post(app.url + "v1/chat/completions", content=raw, timeout=120,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text[:300]
    assert reason in r.json()["error"]["message"]
    time.sleep(0.2)  # what the request logged has been read from the app's output
    assert "Traceback" not in app.output(since=mark)


def test_a_declared_huge_body_is_refused_before_it_is_read(app):
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 314572800\r\n\r\n" + b"x" * 65536)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_huge_body_is_read_with_a_cap(app):
    before = _rss_mib(app.proc.pid)

    def chunks():
        for _ in range(64):
            yield b"x" * (1024 * 1024)

    try:
        r = httpx.post(app.url + "v1/chat/completions", content=chunks(), timeout=60)
        assert r.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while the client still sends
    assert _rss_mib(app.proc.pid) - before < 30


@pytest.mark.parametrize("path, body", [
    ("v1/chat/completions", {"messages": [{"role": "user", "content": "hello world " * 5000}], "stream": True}),
    ("v1/completions", {"prompt": "hello world " * 5000, "stream": True}),
], ids=["chat", "text"])
def test_a_streamed_request_over_the_context_is_a_json_400(app, path, body):
    """Not an SSE error event inside a 200: the prompt is refused before the stream's headers go out."""
    with httpx.stream("POST", app.url + path, json=body, timeout=120) as r:
        text = r.read().decode()
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), text[:300]
    assert "context holds" in json.loads(text)["error"]["message"]


@pytest.mark.parametrize("api, data", [("reveal_model", ["../../etc/passwd"]), ("load_library_model", ["nope.gguf"])])
def test_a_name_not_in_a_list_is_refused_in_one_line_without_a_traceback(app, api, data):
    """Gradio prints a whole traceback for every value a dropdown does not list: a client posting
    such names could fill the log (ui/quiet_dropdown.py)."""
    from gradio_client import Client

    mark = app.lines_seen
    with pytest.raises(Exception, match="not in the list of choices"):
        Client(app.url, verbose=False).predict(*data, api_name=f"/{api}")
    time.sleep(0.3)
    assert "Traceback" not in app.output(since=mark)
