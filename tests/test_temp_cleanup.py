"""Chat exports and the app's temp folders do not pile up (issue 13): an export is removed a short
while after it is made and at exit, and SIGTERM shuts the app down like Ctrl+C, so its atexit clean-ups
(the private Gradio temp folder, exports) run."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.chat_history import ChatMessage
from ui import conversation_handlers as ch
from ui import export_files
from tests.conftest import start_app

HISTORY = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello")]


def test_an_export_is_removed_after_a_short_time(monkeypatch):
    monkeypatch.setattr(export_files, "EXPORT_TTL_S", 0.3)
    path = Path(ch.export_file(None, None, None, HISTORY, "", "JSON", "t"))
    assert path.is_file() and path.parent.name.startswith("fitchat-export-")
    deadline = time.monotonic() + 10
    while path.parent.exists():
        assert time.monotonic() < deadline, "the export folder stayed"
        time.sleep(0.05)
    assert str(path.parent) not in export_files.pending()


def test_exports_left_are_removed_at_exit(monkeypatch):
    monkeypatch.setattr(export_files, "EXPORT_TTL_S", 3600)
    paths = [Path(ch.export_file(None, None, None, HISTORY, "", fmt, "t")) for fmt in ch.EXPORT_FORMATS]
    assert all(p.is_file() for p in paths)
    export_files.remove_all()  # what atexit runs
    assert not any(p.parent.exists() for p in paths)


def test_sigterm_removes_the_apps_temp_folders(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    app = start_app(["--no-default-model"], tmp_path / "data", env={"TMPDIR": str(tmp)})
    try:
        client = app.client()
        client.predict(api_name="/model_status")
        made = sorted(p.name for p in tmp.iterdir())
        assert any(n.startswith("fitchat-gradio-") for n in made), made
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(timeout=30) == 0
    finally:
        out = app.stop()
    left = [p.name for p in tmp.iterdir() if p.name.startswith(("fitchat-gradio-", "fitchat-export-"))]
    assert left == [], (left, out[-2000:])
    assert "Traceback" not in out
