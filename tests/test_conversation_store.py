"""The conversation store: several conversations per user, never overwritten by another tab,
safe with threads and processes, a kill -9 loses at most the turn being written, a damaged file
is moved aside and reported, and today's saved chats are migrated."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from core.chat_history import HistoryError, add_user_message, export_chat, with_reply
from core.conversations import check_conversation_id, check_title, file_stem, title_from, to_markdown
from services.conversation_store import ConversationFileBusy, ConversationStore
from tests.conftest import ROOT


def chat(*texts: str):
    history = ()
    for text in texts:
        history = with_reply(add_user_message(history, text), f"re: {text}")
    return history


def test_titles_search_rename_delete_and_users_apart(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    a = store.create("alice", chat("Plan a trip to Lisbon in spring"), "Be brief.")
    b = store.create("alice", chat("Bake sourdough bread"))
    store.create("bob", chat("Bob's secret Lisbon plan"))
    assert [c.title for c in store.list("alice")] == ["Bake sourdough bread", "Plan a trip to Lisbon in spring"]
    assert [c.id for c in store.list("alice", "lisbon")] == [a.id]           # title, any case
    assert [c.id for c in store.list("alice", "re: bake")] == [b.id]         # the text of a reply
    assert [c.title for c in store.list("bob")] == ["Bob's secret Lisbon plan"]
    assert store.load("bob", a.id) is None and not store.delete("bob", a.id)  # not bob's
    assert store.rename("alice", a.id, "Lisbon")
    saved = store.save("alice", a.id, a.revision, chat("Plan a trip to Lisbon in spring", "and Porto?"), "Be brief.")
    loaded = store.load("alice", a.id)
    assert (loaded.title, loaded.revision, loaded.system_prompt) == ("Lisbon", 2, "Be brief.")  # kept after a write
    assert [m.content for m in loaded.history][-2:] == ["and Porto?", "re: and Porto?"] and saved.id == a.id
    assert store.delete("alice", b.id) and [c.id for c in store.list("alice")] == [a.id]
    assert store.latest("alice") == a.id and store.latest("carol") is None


def test_a_write_from_a_stale_tab_becomes_a_new_conversation(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    first = store.create(None, chat("hello"))
    tab_a = store.save(None, first.id, first.revision, chat("hello", "from tab A"))
    tab_b = store.save(None, first.id, first.revision, chat("hello", "from tab B"))  # B had revision 1
    assert tab_b.forked and tab_b.id != first.id and not tab_a.forked
    assert store.load(None, first.id).history[-1].content == "re: from tab A"
    assert store.load(None, tab_b.id).history[-1].content == "re: from tab B"
    assert store.load(None, tab_b.id).title == "hello (from another tab)"
    store.delete(None, first.id)  # deleted in one tab, written in another: kept as a new one
    again = store.save(None, first.id, tab_a.revision, chat("hello", "still here"))
    assert again.forked and store.load(None, again.id).history[-1].content == "re: still here"


def test_concurrent_writers_from_threads(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    errors = []

    def writer(i: int) -> None:
        try:
            saved = store.create("u", chat(f"thread {i}"))
            history = chat(f"thread {i}")
            for turn in range(20):
                history = with_reply(add_user_message(history, f"t{i}-{turn}"), "ok")
                saved = store.save("u", saved.id, saved.revision, history)
                assert not saved.forked
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    conversations = store.list("u")
    assert len(conversations) == 6
    for c in conversations:
        assert len(store.load("u", c.id).history) == 42


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from core.chat_history import add_user_message, with_reply
from services.conversation_store import ConversationFileBusy, ConversationStore
store = ConversationStore(__import__('pathlib').Path({path!r}))
saved = store.create({user!r}, ())
history = ()
for turn in range({turns}):
    history = with_reply(add_user_message(history, "turn %d " % turn + "x" * 20000), "reply %d" % turn)
    saved = store.save({user!r}, saved.id, saved.revision, history)
    print(saved.revision, flush=True)
"""


def writer_process(path, user, turns):
    code = WRITER.format(root=str(ROOT), path=str(path), user=user, turns=turns)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_two_processes_write_the_same_file(tmp_path):
    path = tmp_path / "c.sqlite3"
    procs = [writer_process(path, user, 30) for user in ("p1", "p2")]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.split()[-1] == "31"
    store = ConversationStore(path)
    for user in ("p1", "p2"):
        (only,) = store.list(user)
        assert len(store.load(user, only.id).history) == 60


def test_kill_9_mid_write_loses_at_most_the_turn_being_written(tmp_path):
    path = tmp_path / "c.sqlite3"
    proc = writer_process(path, "k", 100_000)
    committed = 0
    while committed < 40:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ConversationStore(path)
    assert store.problem is None
    (only,) = store.list("k")
    loaded = store.load("k", only.id)
    # Every turn it reported committed is there, whole; at most the ones after it (in flight) are not.
    assert loaded.revision >= committed and len(loaded.history) == 2 * (loaded.revision - 1)
    assert loaded.history[-1].content == f"reply {loaded.revision - 2}"


def test_a_damaged_file_is_moved_aside_and_reported(tmp_path):
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database, but it is someone's file\n" * 200)
    store = ConversationStore(path)
    assert store.problem and "damaged" in store.problem
    (kept,) = tmp_path.glob("c.sqlite3.damaged-*")
    assert kept.read_bytes().startswith(b"this is not a database") and kept.name in store.problem
    saved = store.create(None, chat("fresh start"))
    assert store.load(None, saved.id).history[0].content == "fresh start"


def test_todays_saved_chats_are_migrated_once(tmp_path):
    path = tmp_path / "history.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE chats (user TEXT PRIMARY KEY, updated REAL NOT NULL, data TEXT NOT NULL)")
    old.execute("INSERT INTO chats VALUES ('alice', 1.0, ?)", (json.dumps(export_chat(chat("old question"), "S")),))
    old.execute("INSERT INTO chats VALUES ('bob', 2.0, 'garbage')")
    old.commit()
    old.close()
    store = ConversationStore(path)
    (migrated,) = store.list("alice")
    loaded = store.load("alice", migrated.id)
    assert loaded.title == "old question" and loaded.system_prompt == "S" and store.list("bob") == []
    store.close()
    assert len(ConversationStore(path).list("alice")) == 1  # not twice


def test_pure_helpers():
    assert title_from(()) == "New chat"
    long = "Explain   the\ndifference between a process and a thread in operating systems please"
    assert title_from(chat(long)) == "Explain the difference between a process and a thread in…"
    assert to_markdown("T", chat("hi"), "Sys").startswith("# T\n\n**System prompt**\n\nSys\n\n## You\n\nhi")
    assert file_stem("../../etc/passwd") == "etc-passwd" and file_stem("¿?") == "chat"
    for bad in ("", "  ", "x" * 121, "a\x07b", 5):
        with pytest.raises(HistoryError):
            check_title(bad)
    for bad in ("../x", "A" * 32, None, "0" * 31):
        with pytest.raises(HistoryError):
            check_conversation_id(bad)
    assert check_title("  My   chat ") == "My chat"


def test_a_file_another_process_holds_locked_is_waited_for_and_never_moved_aside(tmp_path):
    path = tmp_path / "c.sqlite3"
    first = ConversationStore(path)
    saved = first.create("u", with_reply(add_user_message((), "kept"), "yes"))
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # what a second process switching to WAL or migrating holds
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    second = ConversationStore(path, open_wait_s=20)
    release.join()
    assert second.problem is None
    assert not list(tmp_path.glob("*.damaged*"))
    assert second.load("u", saved.id).history[0].content == "kept"


def test_a_file_locked_too_long_is_a_clear_error_and_left_as_it_is(tmp_path):
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).create("u", with_reply(add_user_message((), "kept"), "yes"))
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(ConversationFileBusy, match="stayed locked by another process"):
        ConversationStore(path, open_wait_s=0.5)
    holder.execute("COMMIT")
    assert not list(tmp_path.glob("*.damaged*"))
    (only,) = ConversationStore(path).list("u")
    assert only.title
