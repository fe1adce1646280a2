"""Chat export files: each in its own private temp folder, removed a short while after it is made
(Gradio copies a returned file into its own cache when it answers, and serves that copy), and any
left at exit. Without this every export stayed in /tmp for good (issue 13)."""
from __future__ import annotations

import atexit
import shutil
import threading
from pathlib import Path

from services import temp_folders

EXPORT_TTL_S = 60.0  # long past Gradio's copy into its cache, which happens as the handler answers

_pending: set[str] = set()
_lock = threading.Lock()


def new_export_folder() -> Path:
    folder = str(temp_folders.make_folder("fitchat-export-"))  # marked: swept at the next start if killed
    with _lock:
        _pending.add(folder)
    timer = threading.Timer(EXPORT_TTL_S, remove_folder, (folder,))
    timer.daemon = True
    timer.start()
    return Path(folder)


def remove_folder(folder: str) -> None:
    with _lock:  # forget it first: once the folder is gone nobody may still find it pending
        _pending.discard(folder)
    shutil.rmtree(folder, ignore_errors=True)


def remove_all() -> None:
    """At exit (normal, Ctrl+C or SIGTERM): the exports whose timers have not run yet."""
    with _lock:
        folders = list(_pending)
    for folder in folders:
        remove_folder(folder)


def pending() -> list[str]:
    with _lock:
        return sorted(_pending)


atexit.register(remove_all)
