"""Per-user chat history: the export format and the SQLite store keeping users apart."""
from __future__ import annotations

import json

import pytest

from core.chat_history import HistoryError, add_user_message, export_chat, import_chat, with_reply
from core.generation import GenerationStats
from services.conversation_store import ConversationStore

STATS = GenerationStats(5, 3, 0.1, 30.0, 0.2, 2048, "stop")


def chat(text: str):
    return with_reply(add_user_message((), text), f"re: {text}", stats=STATS)


def test_export_import_round_trip():
    history = chat("hello")
    data = json.loads(json.dumps(export_chat(history, "Be brief.")))
    assert import_chat(data) == (history, "Be brief.")


@pytest.mark.parametrize("data,message", [
    ([], "not a FitChat chat export"),
    ({"version": 2, "messages": []}, "not a FitChat chat export"),
    ({"version": 1, "messages": "x"}, "list"),
    ({"version": 1, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"version": 1, "messages": [{"role": "user", "content": 5}]}, "content"),
    ({"version": 1, "messages": [{"role": "user", "content": "a\x00b"}]}, "content"),
    ({"version": 1, "messages": [], "system_prompt": 7}, "system prompt"),
])
def test_bad_imports_are_refused(data, message):
    with pytest.raises(HistoryError, match=message):
        import_chat(data)


def test_store_keeps_users_apart_and_survives_reopening(tmp_path):
    store = ConversationStore(tmp_path / "h.sqlite3")
    alice = store.create("alice", chat("alice's secret"), "A")
    store.create("bob", chat("bob's plan"))
    store.create(None, chat("local one"))
    store.close()
    again = ConversationStore(tmp_path / "h.sqlite3")
    loaded = again.load("alice", again.latest("alice"))
    assert loaded.history[0].content == "alice's secret" and loaded.system_prompt == "A" and loaded.id == alice.id
    assert again.load("bob", again.latest("bob")).history[0].content == "bob's plan"
    assert again.load(None, again.latest(None)).history[0].content == "local one"
    assert again.latest("carol") is None and again.load("carol", alice.id) is None
    bob = again.latest("bob")
    again._db.execute("UPDATE conversations SET data = 'garbage' WHERE id = ?", (bob,))
    assert again.load("bob", bob).history == ()  # a damaged row shows empty instead of failing the page


def test_share_panel_shows_lan_urls_with_qr_codes(monkeypatch):
    from core.settings import AppSettings
    from ui import share_panel

    monkeypatch.setattr(share_panel, "lan_addresses", lambda: ["192.0.2.10"])
    ctx = type("Ctx", (), {"settings": AppSettings(host="0.0.0.0", port=7861, auth=(("a", "password1"),))})()
    out = share_panel.share_html(ctx)
    assert "http://192.0.2.10:7861" in out and "data:image/svg+xml" in out and "login required" in out
    ctx.settings = AppSettings()
    assert share_panel.share_html(ctx) == ""
