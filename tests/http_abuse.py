"""One round of HTTP abuse against a running app (oversized /v1 bodies, declared and chunked; many
malformed /v1 requests; hostile names at a name-taking endpoint; fuzzed and oversized uploads), and the
app's resident memory. Used by the shared hardening app (tests/conftest.py) as its warm-up and by
tests/test_memory_bound.py."""
from __future__ import annotations

import json
import random
import select
import socket

import httpx
import psutil


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


DECLARED_BYTES = 128 * 2**20


def _post_declared(port: int, size: int) -> bytes:
    """POST a body of ``size`` bytes, all of it sent unless the server answers (or hangs up) first:
    an app that read such a body before its size check would hold all of it in memory."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % size)
        chunk, sent = b"x" * 2**20, 0
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def abuse_round(app, rng: random.Random) -> None:
    url = app.url
    with httpx.Client(timeout=30) as http:
        for _ in range(2):  # bodies declared too large: refused before they are read
            assert _post_declared(app.port, DECLARED_BYTES).startswith(b"HTTP/1.1 413")
        for _ in range(2):  # chunked, no length: read with a cap
            try:
                r = http.post(url + "v1/chat/completions", content=(b"x" * 2**20 for _ in range(16)))
                assert r.status_code == 413
            except httpx.TransportError:
                pass
        bad = [b"{", b"[]", b'{"messages": 5}', b'{"messages":' + b"[" * 20000 + b"]" * 20000 + b"}",
               json.dumps({"messages": [{"role": "user", "content": "a\u0000b"}]}).encode(),
               json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(),
               json.dumps({"prompt": ["x"] * 1000, "max_tokens": -1}).encode()]
        for i in range(150):  # many bad requests
            r = http.post(url + ("v1/chat/completions" if i % 2 else "v1/completions"), content=bad[i % len(bad)],
                          headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500 or r.status_code == 503, r.text[:200]
        for name in ("../../etc/passwd", "/etc/passwd", "x" * 5000, "\u0000", "<script>"):  # hostile names
            r = http.post(url + "gradio_api/call/reveal_model", json={"data": [name]})
            assert r.status_code in (200, 400, 422)
        for i in range(60):  # fuzzed uploads, some over the cap
            size = rng.choice([0, 10, 4096, 2**20, 9 * 2**20])
            name = rng.choice(["chat.json", "../../x.json", "a" * 300, "x.gguf", "\u202e.json"])
            try:
                http.post(url + "gradio_api/upload", files={"files": (name, rng.randbytes(size))})
            except httpx.TransportError:
                pass  # the server may close the connection on an oversized upload


def ordinary_visit(app) -> None:
    """What a first visit costs (imports, pools, caches: not a leak): the page, its config, the
    status, a small upload, a short /v1 reply and one refused request of each kind the abuse sends."""
    from gradio_client import Client

    with httpx.Client(timeout=60) as http:
        assert http.get(app.url).status_code == 200
        assert http.get(app.url + "config").status_code == 200
        http.post(app.url + "gradio_api/upload", files={"files": ("chat.json", b"{}")})
        http.post(app.url + "v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                          "max_tokens": 2})
        for body in (b"{", b'{"messages": 5}', b"x" * 1024):
            http.post(app.url + "v1/chat/completions", content=body, headers={"content-type": "application/json"})
        http.post(app.url + "gradio_api/call/reveal_model", json={"data": ["nothing.gguf"]})
    Client(app.url, verbose=False).predict(api_name="/model_status")
