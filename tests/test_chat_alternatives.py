"""Regenerate keeps the earlier replies (arrows flip between them, kept across export and the
store), and reasoning models' <think> blocks show collapsed and are not sent back to the model."""
from __future__ import annotations

import json

import pytest

from core.chat_history import (HistoryError, add_user_message, export_chat, flip_reply, for_regenerate, import_chat,
                               model_messages, split_reasoning, to_display, with_reply)


def answered(text="Hi", reply="Hello!"):
    return with_reply(add_user_message((), text), reply)


def test_regenerate_keeps_earlier_replies_and_arrows_flip_between_them():
    history = answered(reply="first")
    pending = for_regenerate(history)
    assert model_messages(pending) == [{"role": "user", "content": "Hi"}]  # the model answers afresh
    second = with_reply(with_reply(pending, "sec"), "second")  # streamed growing
    assert second[-1].alternatives == ("first", "second") and second[-1].content == "second"
    assert "Reply 2 of 2" in to_display(second)[-1]["content"]
    third = with_reply(for_regenerate(second), "third")
    assert third[-1].alternatives == ("first", "second", "third")
    back = flip_reply(flip_reply(third, -1), -1)
    assert back[-1].content == "first" and "Reply 1 of 3" in to_display(back)[-1]["content"]
    assert model_messages(back)[-1] == {"role": "assistant", "content": "first"}  # the shown one goes on
    with pytest.raises(HistoryError, match="no earlier"):
        flip_reply(back, -1)
    with pytest.raises(HistoryError, match="no other versions"):
        flip_reply(answered(), 1)
    # Regenerating while an earlier version is shown keeps all of them.
    assert with_reply(for_regenerate(back), "fourth")[-1].alternatives == ("first", "second", "third", "fourth")


def test_alternatives_survive_export_and_bad_ones_are_refused():
    history = flip_reply(with_reply(for_regenerate(answered(reply="one")), "two"), -1)
    data = json.loads(json.dumps(export_chat(history)))
    assert import_chat(data) == (history, "")
    data["messages"][1]["shown"] = 5
    with pytest.raises(HistoryError, match="alternatives"):
        import_chat(data)


def test_think_blocks_are_collapsed_and_not_sent_back():
    text = "<think>The user greets me. I should greet back politely.</think>\n\nHello there!"
    assert split_reasoning(text) == ("The user greets me. I should greet back politely.", "Hello there!", True)
    shown = to_display(answered(reply=text))[-1]["content"]
    assert shown.startswith("<details><summary>Reasoning · 9 words</summary>") and "<details open" not in shown
    assert shown.rstrip().endswith("Hello there!")
    assert model_messages(answered(reply=text))[-1] == {"role": "assistant", "content": "Hello there!"}
    streaming = to_display(answered(reply="<think>Still thinking about"))[-1]["content"]
    assert "Thinking… · 3 words" in streaming
    assert split_reasoning("No reasoning here <think>x</think>") == ("", "No reasoning here <think>x</think>", True)
