"""The chat's work per send must not grow with the sends and conversations before it (issue 12).

A user who sends message after message from one tab, pressing New chat between them, must find the
twelfth send costing what the second did: the same messages sent to the model, the same number and
size of conversation-store writes, the same size of updates sent to the page. Counted, not timed
(bench/chat_session_growth.py times it). The steps are the Chat tab's own, in its order: take the
message, stream the reply while writing the conversation, refresh the list, New chat.
"""
from __future__ import annotations

import json

import pytest

from backends.base import LoadSpec
from backends.manager import ModelManager
from core.options import LoadOptions, SamplingOptions
from core.settings import AppSettings
from services.conversation_store import FILE_NAME, ConversationStore
from services.local_models import build_catalog
from ui import chat_handlers as h, conversation_handlers as ch
from ui.context import AppContext

pytestmark = pytest.mark.real_model

SENDS = 10
USER = "ada"
SESSION = "tab-1"


@pytest.fixture(scope="module")
def counted(tmp_path_factory, embedded_model):
    data = tmp_path_factory.mktemp("per-send")
    settings = AppSettings(data_dir=data, load_options=LoadOptions(n_ctx=1024))
    manager = ModelManager()
    store = ConversationStore(data / FILE_NAME)
    ctx = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir), conversations=store)
    manager.load(LoadSpec(str(embedded_model), settings.load_options, display_name="embedded"))
    work: dict[str, list] = {"model_messages": [], "writes": []}
    stream_chat, save = manager.stream_chat, store.save

    def counting_stream(messages, *args, **kwargs):
        work["model_messages"].append(len(messages))
        return stream_chat(messages, *args, **kwargs)

    def counting_save(user, conversation_id, revision, history, system_prompt=""):
        work["writes"].append(len(json.dumps([[m.role, m.content] for m in history])))
        return save(user, conversation_id, revision, history, system_prompt)

    manager.stream_chat, store.save = counting_stream, counting_save
    yield ctx, work
    manager.close()


def _sampling():
    values = {**SamplingOptions().model_dump(), "stop": "", "temperature": 0.0, "seed": 1, "max_tokens": 2}
    return [values[name] for name in h.SAMPLING_FIELDS]


def _one_send(ctx, work, text, history, current) -> dict:
    """One Enter in the tab: what each step did, counted."""
    before = {k: len(v) for k, v in work.items()}
    box, taken = h.take_message(ctx, SESSION, text)
    assert box == "" and taken == text
    updates = list(ch.persist(ctx, USER, current, "", h.send(ctx, SESSION, taken, history, "", _sampling())))
    display, history, current = updates[-1]
    listing = ch.list_update(ctx, USER, "", current)
    return {"history": history, "current": current,
            "model_messages": work["model_messages"][before["model_messages"]:],
            "writes": len(work["writes"]) - before["writes"],
            "largest_write": max(work["writes"][before["writes"]:]),
            "update_items": max(len(u[0]) for u in updates),
            "update_bytes": len(json.dumps(display)) - len(display[-1]["content"]),  # without the reply's own text
            "listed": len(listing.choices)}


def test_per_send_work_does_not_grow_with_past_conversations(counted):
    ctx, work = counted
    rows = []
    history, current = (), None
    for i in range(SENDS):
        row = _one_send(ctx, work, f"Say hello number {i:02d}.", history, current)
        rows.append(row)
        # New chat, as the button does: an empty conversation, the one before kept in the list
        _, history, current, _, _ = ch.new_conversation(ctx, SESSION)
    # every send: one user message to the model, two writes (taken, finished) of one exchange
    assert [r["model_messages"] for r in rows] == [[1]] * SENDS
    assert {r["writes"] for r in rows} == {2}
    assert max(r["largest_write"] for r in rows) <= min(r["largest_write"] for r in rows) + 200
    assert {r["update_items"] for r in rows} == {2}
    assert max(r["update_bytes"] for r in rows) - min(r["update_bytes"] for r in rows) < 50
    # the list grows by one per conversation (what the user sees), and no other work does
    assert [r["listed"] for r in rows] == list(range(1, SENDS + 1))


def test_without_new_chat_the_conversation_and_so_the_prompt_grow(counted):
    """What the counters above would show if state leaked from one send into the next: the model
    sees the whole conversation. (A client that sends an empty history to Gradio still continues
    the tab's conversation: the history is a gr.State kept on the server per session.)"""
    ctx, work = counted
    history, current = (), None
    seen = []
    for i in range(3):
        row = _one_send(ctx, work, f"Count {i}.", history, current)
        history, current = row["history"], row["current"]
        seen += row["model_messages"]
    assert seen == [1, 3, 5]
    _, history, current, _, _ = ch.new_conversation(ctx, SESSION)


def test_each_update_reaches_the_page_as_it_comes(tmp_path):
    """The conversation writer passes a reply's updates on at once: holding one back until the next
    arrives delayed every token, the first one by a whole update interval (bench/remote_cpu.py saw
    the chat's time to first token 65 ms over the API's)."""
    from core.chat_history import add_user_message, with_reply

    ctx = AppContext(AppSettings(data_dir=tmp_path), ModelManager(), lambda: None,
                     conversations=ConversationStore(tmp_path / FILE_NAME))
    asked = add_user_message((), "hi")
    made = []

    def updates():
        for history in (asked, with_reply(asked, "a"), with_reply(asked, "ab")):
            made.append(history)
            yield [], history

    shown = ch.persist(ctx, USER, None, "", updates())
    for n in (1, 2, 3):
        _display, history, _current = next(shown)
        assert len(made) == n and history is made[-1]
    _display, history, current = next(shown)  # the last one again, with the revision written
    assert history is made[-1] and current is not None
    assert ctx.conversations.load(USER, current[0]).history[-1].content == "ab"
    ctx.manager.close()


def test_nothing_follows_the_update_with_the_stats(tmp_path):
    """The reply's last update (its stats) is written before it goes out and nothing comes after it:
    an update sent after the one the user saw last undid a New chat pressed in between."""
    from core.chat_history import add_user_message, with_reply
    from core.generation import GenerationStats

    ctx = AppContext(AppSettings(data_dir=tmp_path), ModelManager(), lambda: None,
                     conversations=ConversationStore(tmp_path / FILE_NAME))
    asked = add_user_message((), "hi")
    stats = GenerationStats(prompt_tokens=3, completion_tokens=2, ttft_s=0.05, decode_tokens_per_s=20.0, total_s=0.1,
                            n_ctx=512, finish_reason="stop")
    final = with_reply(asked, "ab", stats=stats)
    shown = list(ch.persist(ctx, USER, None, "", iter([([], asked), ([], with_reply(asked, "a")), ([], final)])))
    assert [history for _, history, _ in shown] == [asked, with_reply(asked, "a"), final]
    current = shown[-1][2]
    assert ctx.conversations.load(USER, current[0]).history == final and current[1] == 2
    ctx.manager.close()
