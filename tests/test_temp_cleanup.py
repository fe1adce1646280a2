"""Chat exports and the app's temp folders do not pile up (issue 13): an export is removed a short
while after it is made and at exit, and SIGTERM shuts the app down like Ctrl+C, so its atexit clean-ups
(the private Gradio temp folder, exports) run."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from core.chat_history import ChatMessage
from ui import conversation_handlers as ch
from services import temp_folders
from ui import export_files
from tests.conftest import ROOT, start_app

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


def _marked_folder(root: Path, prefix: str, pid: int, started) -> Path:
    folder = root / f"{prefix}{pid}-{started}"
    folder.mkdir()
    (folder / temp_folders.MARKER).write_text(f"{pid} {started!r}\n")
    (folder / "upload.bin").write_bytes(b"x")
    return folder


def test_only_folders_of_gone_owners_are_swept(tmp_path):
    import psutil
    import subprocess
    import sys

    me = psutil.Process()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _marked_folder(tmp_path, "fitchat-gradio-", gone.pid, 1.0)
    reused = _marked_folder(tmp_path, "fitchat-export-", me.pid, me.create_time() - 1000)  # PID reused
    live = _marked_folder(tmp_path, "fitchat-gradio-", me.pid, me.create_time())
    unmarked = tmp_path / "fitchat-export-unmarked"
    unmarked.mkdir()
    other = _marked_folder(tmp_path, "gradio-", gone.pid, 1.0)  # not our prefix
    target = _marked_folder(tmp_path, "target-", gone.pid, 1.0)
    link = tmp_path / "fitchat-gradio-link"
    link.symlink_to(target)  # a link with our prefix is never followed
    removed = temp_folders.sweep_stale(tmp_path)
    assert sorted(removed) == sorted([dead.name, reused.name])
    assert not dead.exists() and not reused.exists()
    assert live.exists() and unmarked.exists() and other.exists() and link.is_symlink() and target.exists()
    folder = temp_folders.make_folder("fitchat-export-")  # what the app makes: marked as this process's
    try:
        assert temp_folders.owned_by_this_process(folder) and not temp_folders.is_stale(folder)
    finally:
        shutil.rmtree(folder)


def _exporter(env: dict):
    """A real process that makes a chat export folder the way the app does, then lives on."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "from ui import export_files; import time; "
                             "print(export_files.new_export_folder(), flush=True); time.sleep(600)"],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_start_sweeps_the_folders_of_processes_killed_with_sigkill_and_keeps_live_ones(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    killed = start_app(["--no-default-model"], tmp_path / "data-killed", env=env)
    killed_exporter, killed_export = _exporter(env)
    live_exporter, live_export = _exporter(env)  # a live app's export folder: must stay
    later = None
    try:
        killed_folder = Path(_private_temp(killed, tmp))
        for proc in (killed.proc, killed_exporter):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert killed_folder.exists() and killed_export.exists()  # SIGKILL: nothing could remove them
        later = start_app(["--no-default-model"], tmp_path / "data-later", env=env)
        assert not killed_folder.exists() and not killed_export.exists()
        assert live_export.exists() and Path(_private_temp(later, tmp)).exists()
        assert "removed 2 temp folder(s)" in later.output()
    finally:
        for app in (killed, later):
            if app is not None:
                app.stop()
        for proc in (killed_exporter, live_exporter):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _private_temp(app, tmp: Path) -> str:
    """The app's fitchat-gradio-* folder: the one whose marker names its PID."""
    (folder,) = [p for p in tmp.glob("fitchat-gradio-*")
                 if (p / temp_folders.MARKER).read_text().split()[0] == str(app.proc.pid)]
    return str(folder)
