import pytest

from core.chat_history import (ChatMessage, HistoryError, MAX_MESSAGE_CHARS, add_user_message, content_text,
                               edit_user_message, for_regenerate, format_stats, model_messages, to_display,
                               with_reply)
from core.generation import GenerationStats

STATS = GenerationStats(10, 5, 0.12, 42.5, 0.3, 100, "stop")


def test_add_and_reply():
    h = add_user_message((), "hi")
    h = with_reply(h, "hel")
    h = with_reply(h, "hello", stats=STATS)
    assert [m.role for m in h] == ["user", "assistant"]
    assert h[-1].content == "hello" and h[-1].stats == STATS


@pytest.mark.parametrize("bad", ["", "   ", None, 5, "a\x00b", "x" * (MAX_MESSAGE_CHARS + 1)])
def test_bad_user_text_rejected(bad):
    with pytest.raises(HistoryError):
        add_user_message((), bad)


def test_regenerate_keeps_the_last_reply_as_an_alternative_only():
    h = with_reply(add_user_message(with_reply(add_user_message((), "a"), "A"), "b"), "B")
    again = for_regenerate(h)
    assert [m.content for m in again] == ["a", "A", "b", ""]  # a new, empty reply is the version shown
    assert again[-1].alternatives == ("B", "") and again[-1].shown == 1
    with pytest.raises(HistoryError):
        for_regenerate(())


def test_edit_replaces_and_truncates():
    h = with_reply(add_user_message(with_reply(add_user_message((), "a"), "A"), "b"), "B")
    edited = edit_user_message(h, 0, "a2")
    assert [m.content for m in edited] == ["a2"]
    with pytest.raises(HistoryError):
        edit_user_message(h, 1, "not mine")
    for bad_index in (-1, 4, "0", None, True, 1.0):
        with pytest.raises(HistoryError):
            edit_user_message(h, bad_index, "x")


def test_model_messages_adds_system_and_skips_empty_replies():
    h = with_reply(add_user_message((), "a"), "", error="boom")
    h = add_user_message(h, "b")
    msgs = model_messages(h, "Be brief.")
    assert msgs == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"}]
    assert model_messages(h, "  ")[0]["role"] == "user"


def test_display_shows_stats_and_errors_but_model_sees_plain_text():
    h = with_reply(add_user_message((), "q"), "partial", stats=STATS, error="worker died")
    shown = to_display(h)[-1]["content"]
    assert "partial" in shown and "worker died" in shown and "42.5 tok/s" in shown
    assert model_messages(h)[-1]["content"] == "partial"


def test_format_stats_of_a_one_token_reply_has_no_speed():
    one = format_stats(GenerationStats(500, 1, 0.3, 0.0, 0.3, 2048, "stop"))
    assert one.startswith("1 token · n/a tok/s · TTFT 300 ms")
    assert format_stats(GenerationStats(500, 3, 1.25, 12.5, 1.5, 2048, "stop")).startswith(
        "3 tokens · 12.5 tok/s · TTFT 1.25 s")


def test_format_stats_mentions_stop_and_cutoffs():
    assert "stopped" in format_stats(GenerationStats(1, 2, 0.1, 1.0, 1.0, 10, "cancelled"))
    assert "context full" in format_stats(GenerationStats(1, 2, 0.1, 1.0, 1.0, 10, "context"))
    assert "context 3/10 (30%)" in format_stats(GenerationStats(1, 2, 0.1, 1.0, 1.0, 10, "stop"))


def test_content_text_accepts_gradio6_parts():
    assert content_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert content_text("x") == "x" and content_text(None) == ""
    with pytest.raises(HistoryError):
        content_text(object())


def test_history_is_immutable():
    h = add_user_message((), "a")
    with pytest.raises(Exception):
        h[0].content = "changed"
    assert isinstance(h[0], ChatMessage)
