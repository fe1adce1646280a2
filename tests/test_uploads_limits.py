"""Uploads (issue 13, hole 6): only files of the size the app needs (chat imports, 8 MiB) are
taken, and the app's private temp folder is removed when it exits."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.conftest import start_app


def test_big_uploads_are_refused_and_the_temp_folder_goes_at_exit(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    app = start_app(["--no-default-model"], tmp_path / "data", env={"TMPDIR": str(tmp)})
    try:
        (temp,) = tmp.glob("fitchat-gradio-*")  # the app's private upload folder
        big = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.json", b"x" * (20 * 1024 * 1024))},
                         timeout=60)
        assert big.status_code == 413, big.status_code
        small = httpx.post(app.url + "gradio_api/upload", files={"files": ("chat.json", b"{}")}, timeout=60)
        assert small.status_code == 200
        app.proc.send_signal(signal.SIGINT)  # Ctrl+C
        app.proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while temp.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not temp.exists()
    finally:
        app.stop()
