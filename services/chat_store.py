"""Each user's current chat, kept in one SQLite file in the data folder so it survives restarts.
Users never see each other's chats: rows are keyed by the login name ("local" without logins)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

from core.chat_history import History, HistoryError, export_chat, import_chat

LOCAL_USER = "local"


class ChatStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS chats (user TEXT PRIMARY KEY, updated REAL NOT NULL, "
                         "data TEXT NOT NULL)")

    @staticmethod
    def _user(user: Optional[str]) -> str:
        return user or LOCAL_USER

    def save(self, user: Optional[str], history: History, system_prompt: str = "") -> None:
        data = json.dumps(export_chat(history, system_prompt), ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT INTO chats (user, updated, data) VALUES (?, ?, ?) ON CONFLICT(user) "
                             "DO UPDATE SET updated = excluded.updated, data = excluded.data",
                             (self._user(user), time.time(), data))

    def load(self, user: Optional[str]) -> tuple[History, str]:
        with self._lock:
            row = self._db.execute("SELECT data FROM chats WHERE user = ?", (self._user(user),)).fetchone()
        if row is None:
            return (), ""
        try:
            return import_chat(json.loads(row[0]))
        except (HistoryError, ValueError):
            return (), ""  # a damaged row: start afresh rather than fail the page

    def close(self) -> None:
        with self._lock:
            self._db.close()
