"""Every user's conversations in one SQLite file under the data folder.

WAL mode and one short transaction per write, so a turn is either on disk whole or not at all (a
kill -9 loses at most the turn being written); ``busy_timeout`` lets several processes share the
file. Each conversation has a revision: a write based on an older revision (another tab of the
same user wrote in between) never overwrites, it continues as a new conversation. A file that is
not a sound database is moved aside and reported (``problem``), never silently replaced; a file that
is only busy (another process is opening or writing it) is waited for and never moved aside.
Rows are keyed by the login name ("local" without logins); users never see each other's rows.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.chat_history import History, HistoryError, export_chat, import_chat
from core.conversations import NEW_TITLE, ConversationSummary, search_text, title_from

LOCAL_USER = "local"
FILE_NAME = "history.sqlite3"  # the file today's single saved chat lives in; migrated in place
LIST_LIMIT = 200
OPEN_WAIT_S = 30.0  # how long a start waits for a file another process holds locked
log = logging.getLogger("fitchat.conversations")
# The errors that mean the bytes are not a sound database. Anything else (SQLITE_BUSY, SQLITE_LOCKED,
# a full disk, no permission) says nothing about the file and must never move it aside.
_DAMAGE = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


class ConversationFileBusy(RuntimeError):
    """Another process held the conversation file locked for longer than the start waits."""


class _IntegrityError(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    return isinstance(exc, _IntegrityError) or getattr(exc, "sqlite_errorname", "") in _DAMAGE

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
  id TEXT PRIMARY KEY, user TEXT NOT NULL, title TEXT NOT NULL, renamed INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL, updated REAL NOT NULL, revision INTEGER NOT NULL,
  data TEXT NOT NULL, search TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user, updated);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Saved:
    id: str
    revision: int
    forked: bool = False  # the write went to a new conversation (the old one changed elsewhere)


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    revision: int
    history: History
    system_prompt: str


class ConversationStore:
    def __init__(self, path: Path, open_wait_s: float = OPEN_WAIT_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.problem: Optional[str] = None  # set when a damaged file was moved aside at start
        self._lock = threading.Lock()
        try:
            self._db = self._open_waiting(open_wait_s)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            moved = self._move_aside()
            self.problem = (f"The conversation file {path.name} was damaged ({exc}). It was kept as "
                            f"{moved.name} in the data folder and a new, empty one was started.")
            log.error("fitchat: %s", self.problem)
            self._db = self._open_waiting(open_wait_s)

    def _open_waiting(self, wait_s: float) -> sqlite3.Connection:
        """Switching to WAL and the first schema write take the file's write lock; when two
        processes start together one of them can get SQLITE_BUSY at once (no busy handler there)."""
        deadline = time.monotonic() + wait_s
        delay = 0.02
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                    raise
                if time.monotonic() >= deadline:
                    raise ConversationFileBusy(
                        f"The conversation file {self.path} stayed locked by another process for "
                        f"{wait_s:.0f} s; it was left as it is. Close the other FitChat using this data "
                        f"folder, or start this one with another --data-dir.") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=1)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # "file is not a database" surfaces here
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _IntegrityError(f"integrity check: {check}")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash cannot lose a committed turn
            db.executescript(_SCHEMA)
            self._migrate(db)
            db.execute("PRAGMA busy_timeout=15000")  # from here on writers queue behind each other
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        self.path.rename(target)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        return target

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Today's one-chat-per-user rows (table ``chats``) become conversations, once."""
        db.execute("BEGIN IMMEDIATE")
        try:
            has_chats = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='chats'").fetchone()
            done = db.execute("SELECT 1 FROM meta WHERE key='chats_migrated'").fetchone()
            if has_chats and not done:
                for user, updated, data in db.execute("SELECT user, updated, data FROM chats").fetchall():
                    try:
                        history, system = import_chat(json.loads(data))
                    except (HistoryError, ValueError):
                        log.warning("fitchat: a saved chat of %r could not be read and was left in table chats", user)
                        continue
                    if history:
                        _insert(db, user, history, system, updated)
                db.execute("INSERT INTO meta (key, value) VALUES ('chats_migrated', ?)", (str(time.time()),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _user(user: Optional[str]) -> str:
        return user or LOCAL_USER

    def _write(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return result

    def create(self, user: Optional[str], history: History = (), system_prompt: str = "",
               title: Optional[str] = None) -> Saved:
        return self._write(lambda db: Saved(_insert(db, self._user(user), history, system_prompt,
                                                    time.time(), title), 1))

    def save(self, user: Optional[str], conversation_id: Optional[str], revision: int, history: History,
             system_prompt: str = "") -> Saved:
        """Write the whole conversation if it is still at ``revision``; otherwise (changed or deleted
        elsewhere, or none yet) write it as a new conversation, so nothing anyone wrote is lost."""
        owner = self._user(user)

        def write(db):
            row = None
            if conversation_id is not None:
                row = db.execute("SELECT revision, title, renamed FROM conversations WHERE id = ? AND user = ?",
                                 (conversation_id, owner)).fetchone()
            if row is None or row[0] != revision:
                title = None
                if row is not None:
                    title = f"{row[1] if row[2] else title_from(history)} (from another tab)"
                new_id = _insert(db, owner, history, system_prompt, time.time(), title)
                return Saved(new_id, 1, forked=conversation_id is not None)
            title = row[1] if row[2] else title_from(history)
            db.execute("UPDATE conversations SET title = ?, updated = ?, revision = ?, data = ?, search = ? "
                       "WHERE id = ?", (title, time.time(), revision + 1, _data(history, system_prompt),
                                        search_text(title, history, system_prompt), conversation_id))
            return Saved(conversation_id, revision + 1)

        return self._write(write)

    def load(self, user: Optional[str], conversation_id: str) -> Optional[Conversation]:
        with self._lock:
            row = self._db.execute("SELECT title, revision, data FROM conversations WHERE id = ? AND user = ?",
                                   (conversation_id, self._user(user))).fetchone()
        if row is None:
            return None
        try:
            history, system = import_chat(json.loads(row[2]))
        except (HistoryError, ValueError):
            log.warning("fitchat: conversation %s could not be read; shown empty, kept on disk", conversation_id)
            history, system = (), ""
        return Conversation(conversation_id, row[0], row[1], history, system)

    def latest(self, user: Optional[str]) -> Optional[str]:
        with self._lock:
            row = self._db.execute("SELECT id FROM conversations WHERE user = ? ORDER BY updated DESC LIMIT 1",
                                   (self._user(user),)).fetchone()
        return row[0] if row else None

    def list(self, user: Optional[str], query: str = "", limit: int = LIST_LIMIT) -> list[ConversationSummary]:
        """Newest first; ``query`` matches the title or any message, ignoring case."""
        sql = "SELECT id, title, updated FROM conversations WHERE user = ?"
        args: list = [self._user(user)]
        if query:
            sql += " AND instr(search, ?) > 0"
            args.append(query.casefold())
        sql += " ORDER BY updated DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [ConversationSummary(*row) for row in rows]

    def rename(self, user: Optional[str], conversation_id: str, title: str) -> bool:
        def write(db):
            row = db.execute("SELECT data FROM conversations WHERE id = ? AND user = ?",
                             (conversation_id, self._user(user))).fetchone()
            if row is None:
                return False
            history, system = import_chat(json.loads(row[0]))
            db.execute("UPDATE conversations SET title = ?, renamed = 1, search = ? "
                       "WHERE id = ?", (title, search_text(title, history, system), conversation_id))
            return True

        return self._write(write)

    def delete(self, user: Optional[str], conversation_id: str) -> bool:
        return self._write(lambda db: db.execute("DELETE FROM conversations WHERE id = ? AND user = ?",
                                                 (conversation_id, self._user(user))).rowcount > 0)

    def revision(self, user: Optional[str], conversation_id: str) -> Optional[int]:
        with self._lock:
            row = self._db.execute("SELECT revision FROM conversations WHERE id = ? AND user = ?",
                                   (conversation_id, self._user(user))).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _data(history: History, system_prompt: str) -> str:
    return json.dumps(export_chat(history, system_prompt), ensure_ascii=False)


def _insert(db: sqlite3.Connection, user: str, history: History, system_prompt: str, when: float,
            title: Optional[str] = None) -> str:
    new_id = uuid.uuid4().hex
    renamed = title is not None
    title = title or title_from(history) or NEW_TITLE
    db.execute("INSERT INTO conversations (id, user, title, renamed, created, updated, revision, data, search) "
               "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
               (new_id, user, title, int(renamed), when, when, _data(history, system_prompt),
                search_text(title, history, system_prompt)))
    return new_id
