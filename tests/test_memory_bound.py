"""Resource bound under abuse (issue 13): the UI process's memory after a representative abuse run
(oversized /v1 bodies, declared and chunked; many malformed /v1 requests; hostile names at the name-
taking endpoints; fuzzed and oversized uploads) is within 50 MiB of where it was before it."""
from __future__ import annotations

import json
import random
import socket
import time

import httpx
import psutil

from tests.conftest import start_app

BOUND_MIB = 50


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _abuse(app, rng: random.Random) -> None:
    url = app.url
    with httpx.Client(timeout=30) as http:
        for _ in range(3):  # bodies declared too large: refused before they are read
            with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 314572800\r\n\r\n" + b"x" * 65536)
                assert sock.recv(4096).startswith(b"HTTP/1.1 413")
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


def test_memory_stays_bounded_under_abuse(tmp_path):
    app = start_app(["--no-default-model"], tmp_path / "data", env={"TMPDIR": str(tmp_path)})
    try:
        rng = random.Random(13)
        _abuse(app, rng)  # once to warm caches, imports and pools: what a first visit costs is not a leak
        before = _rss_mib(app.proc.pid)
        started = time.monotonic()
        for _ in range(2):
            _abuse(app, rng)
        after = _rss_mib(app.proc.pid)
        assert after - before < BOUND_MIB, f"RSS {before:.0f} -> {after:.0f} MiB"
        assert httpx.get(app.url + "config", timeout=10).status_code == 200  # and it still serves
        print(f"abuse run: RSS {before:.0f} -> {after:.0f} MiB in {time.monotonic() - started:.1f} s")
    finally:
        app.stop()
