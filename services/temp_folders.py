"""The app's private temp folders (Gradio's upload cache ``fitchat-gradio-*``, chat exports
``fitchat-export-*``) carry an owner marker, so folders left by an app that was killed with SIGKILL
(nothing of it could run to remove them) are swept at the next start (issue 13).

A folder is removed only when all hold: its name has one of our prefixes, it is a real folder (not a
link) owned by this user, and its marker names a process that is gone: no process with that PID, or
one started at another time (the PID was reused). A folder without a readable marker is kept: it may be
a live app's folder in the instant between ``mkdtemp`` and the marker write, or one we cannot judge."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

PREFIXES = ("fitchat-gradio-", "fitchat-export-")
MARKER = ".fitchat-owner"  # "PID CREATE_TIME": the process that made the folder


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def _mark(folder: Path, pid: int) -> None:
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(f"{pid} {_create_time(pid)!r}\n")
    tmp.replace(folder / MARKER)


def make_folder(prefix: str) -> Path:
    """A new private folder (mode 0700, like ``mkdtemp``) marked as this process's."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown temp folder prefix {prefix!r}")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _mark(folder, os.getpid())
    return folder


def owned_by_this_process(folder: Path) -> bool:
    """True when the marker names this very process (an in-place restart by ``execv`` keeps the PID
    and the start time, so a restarted app still owns its inherited folder)."""
    return _owner(folder) == (os.getpid(), _create_time(os.getpid()))


def _owner(folder: Path) -> tuple[int, float | None] | None:
    try:
        text = (folder / MARKER).read_text()[:100].split()
        return int(text[0]), (None if text[1] == "None" else float(text[1]))
    except (OSError, ValueError, IndexError):
        return None


def is_stale(folder: Path) -> bool:
    try:
        info = folder.lstat()
    except OSError:
        return False
    if not (folder.name.startswith(PREFIXES) and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()):
        return False
    owner = _owner(folder)
    if owner is None:
        return False
    pid, started = owner
    alive_since = _create_time(pid)
    if alive_since is None:
        return True  # no such process
    # A live process with another start time is not the owner (PID reused); the same start time is.
    return started is not None and abs(alive_since - started) > 0.01


def sweep_stale(root: Path | None = None) -> list[str]:
    """Remove our folders whose owner process is gone; returns their names."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = [p for p in root.iterdir() if p.name.startswith(PREFIXES)]
    except OSError:
        return removed
    for folder in entries:
        if is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder.name)
    return removed
