"""Many users against one app: histories kept per user across restarts, export and import, and a
soak of 8 concurrent clients x 50 turns (bounded, loopback only) with no errors, no cross-talk and
flat memory."""
from __future__ import annotations

import json
import threading
import time

import psutil
import pytest
from gradio_client import Client, handle_file

from core.options import SamplingOptions
from tests.conftest import start_app

pytestmark = pytest.mark.real_model
DEFAULTS = {**SamplingOptions().model_dump(), "stop": "", "seed": None}


def send(client: Client, text: str, **changes):
    values = {**DEFAULTS, **changes}
    return client.predict(text, "", *[values[k] for k in SamplingOptions.model_fields], api_name="/send")


def texts(display: list[dict], role: str) -> list[str]:
    out = []
    for m in display:
        if m["role"] == role:
            c = m["content"]
            out.append(c if isinstance(c, str) else "".join(p.get("text", "") for p in c))
    return out


def test_each_user_gets_their_own_chat_back_after_a_restart(tmp_path):
    args = ["--listen", "--auth", "alice:alice-password", "--auth", "bob:bob-password", "--ctx", "2048"]
    app = start_app(args, tmp_path)
    try:
        alice = Client(app.url, auth=("alice", "alice-password"), verbose=False)
        bob = Client(app.url, auth=("bob", "bob-password"), verbose=False)
        deadline = time.monotonic() + 60
        while alice.predict(api_name="/model_status")["status"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.3)
        send(alice, "Alice says apples.", max_tokens=4)
        send(bob, "Bob says bananas.", max_tokens=4)
    finally:
        app.stop()
    app = start_app(args, tmp_path)  # same data folder: the store survives
    try:
        alice = Client(app.url, auth=("alice", "alice-password"), verbose=False)
        bob = Client(app.url, auth=("bob", "bob-password"), verbose=False)
        a_display, _ = alice.predict(api_name="/restore_chat")[:2]
        b_display, _ = bob.predict(api_name="/restore_chat")[:2]
        assert texts(a_display, "user") == ["Alice says apples."]
        assert texts(b_display, "user") == ["Bob says bananas."]
    finally:
        app.stop()


def test_export_then_import(tmp_path):
    app = start_app(["--ctx", "2048"], tmp_path)
    try:
        app.wait_model_ready()
        client = app.client()
        send(client, "Remember the word zebra.", max_tokens=4)
        exported = client.predict("", "JSON", "Zebra", api_name="/export_chat")
        data = json.loads(open(exported if isinstance(exported, str) else exported["value"], encoding="utf-8").read())
        assert data["version"] == 1 and data["messages"][0]["content"] == "Remember the word zebra."
        other = app.client()  # another session imports it
        display, system, title = other.predict(handle_file(exported if isinstance(exported, str) else exported["value"]),
                                               api_name="/import_chat")
        assert texts(display, "user") == ["Remember the word zebra."] and system == "" and title == "Zebra (imported)"
        bad = tmp_path / "bad.json"
        bad.write_text('{"version": 1, "messages": [{"role": "system", "content": "x"}]}')
        with pytest.raises(Exception, match="role"):
            other.predict(handle_file(str(bad)), api_name="/import_chat")
    finally:
        app.stop()


def test_soak_8_clients_50_turns(tmp_path):
    app = start_app(["--ctx", "8192", "--parallel", "4"], tmp_path)  # batching on: 4 replies at once
    errors: list[str] = []
    finals: dict[int, list] = {}
    rss: list[int] = []
    try:
        app.wait_model_ready()
        server = psutil.Process(app.proc.pid)

        def client_loop(i: int) -> None:
            # 50 turns as 5 conversations of 10 (New chat between them): the prompt stays short, so the
            # soak measures the app, not the prefill of an ever longer history.
            client = app.client()
            try:
                for conversation in range(5):
                    client.predict(api_name="/new_chat")
                    for turn in range(10):
                        display = send(client, f"c{i} t{conversation * 10 + turn}", max_tokens=2, temperature=0.0)[0]
                    expected = [f"c{i} t{conversation * 10 + turn}" for turn in range(10)]
                    if texts(display, "user") != expected:  # another client's message, or a lost one
                        errors.append(f"client {i} conversation {conversation}: {texts(display, 'user')}")
                finals[i] = display
            except Exception as exc:  # recorded, asserted below
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")

        def watch_memory() -> None:
            while any(t.is_alive() for t in threads):
                rss.append(server.memory_info().rss)
                time.sleep(2)

        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        watcher = threading.Thread(target=watch_memory, daemon=True)
        watcher.start()
        for t in threads:
            t.join(timeout=600 - (time.monotonic() - started))
        assert not any(t.is_alive() for t in threads), "the soak did not finish in 10 minutes"
        assert errors == []
        assert len(finals) == 8
        # Flat memory: the server's RSS at the end is within 64 MiB of where it was once warm.
        warm = rss[min(3, len(rss) - 1)]
        assert rss[-1] - warm < 64 << 20, [r >> 20 for r in rss]
    finally:
        app.stop()
