"""Restart this FitChat in place: the same process (same PID, same terminal, Ctrl+C still works),
with another command line. Used to turn network sharing on or off from the UI."""
from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from services.paths import project_root


def write_login_file(data_dir: Path, user: str, password: str) -> Path:
    """A file only this user can read, with one admin login, for the restarted app to read once and
    delete (``--login-file-once``). In the data folder, which the web server never serves."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f".login-once-{secrets.token_hex(8)}.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{user}:{password}:admin\n")
    return path


def restart_later(argv: list[str], before: Callable[[], None], delay_s: float = 1.0) -> None:
    """In ``delay_s`` (time for the answer to reach the browser): run ``before`` (end the model
    worker, so its memory is free for the new process), then replace this process with
    ``python app.py ARGV``. Open sockets close on exec; the new server binds the same port."""

    def go() -> None:
        time.sleep(delay_s)
        try:
            before()
        finally:
            print(f"FitChat: restarting with: app.py {' '.join(_printable(argv))}", flush=True)
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, str(project_root() / "app.py"), *argv])

    threading.Thread(target=go, name="restart", daemon=True).start()


def _printable(argv: list[str]) -> list[str]:
    """The command line without passwords (``--auth user:password`` shows the user only)."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append(arg.split(":", 1)[0] + ":***")
            hide = False
        elif arg.startswith("--auth="):
            out.append("--auth=" + arg[len("--auth="):].split(":", 1)[0] + ":***")
        else:
            out.append(arg)
            hide = arg == "--auth"
    return out
