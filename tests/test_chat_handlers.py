"""Chat tab handlers and the ModelManager, called directly (no browser), with the real model."""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import gradio as gr
import pytest

from backends.base import LoadSpec, ModelLoadError
from backends.manager import BusyError, ModelManager
from core.options import LoadOptions, SamplingOptions
from core.settings import AppSettings
from services.local_models import build_catalog
from ui import chat_handlers as h
from ui.context import AppContext

pytestmark = pytest.mark.real_model

SAMPLING = [SamplingOptions().model_dump()[name] for name in h.SAMPLING_FIELDS]


def sampling(**changes):
    values = {**SamplingOptions().model_dump(), "stop": "", **changes}
    return [values[name] for name in h.SAMPLING_FIELDS]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, embedded_model, bad_models):
    data = tmp_path_factory.mktemp("handlers")
    (data / "models").mkdir()
    for key in ("truncated", "escape_template", "not_gguf"):
        (data / "models" / bad_models[key].name).write_bytes(bad_models[key].read_bytes())
    settings = AppSettings(data_dir=data, load_options=LoadOptions(n_ctx=1024))
    manager = ModelManager()
    context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir))
    manager.load(LoadSpec(str(embedded_model), settings.load_options, display_name="embedded"))
    yield context
    manager.close()


def last(updates):
    items = list(updates)
    return items[-1]


def test_send_streams_a_reply_with_stats(ctx):
    updates = list(h.send(ctx, "s1", "Name three colours.", (), "", sampling(max_tokens=40, seed=3)))
    assert all(len(u) == 2 for u in updates)  # (chat, history): the message box is not an output
    display, history = updates[-1]
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[-1].content and history[-1].stats.completion_tokens > 0
    assert "tok/s" in display[-1]["content"] and "context" in display[-1]["content"]
    growing = [len(u[1][-1].content) for u in updates if u[1] and u[1][-1].role == "assistant"]
    assert growing == sorted(growing)


def test_the_session_is_free_when_the_reply_with_stats_arrives(ctx):
    """A Send pressed the moment the stats show must be taken, not refused as "still being written"
    (the browser sees the last item before Gradio resumes the generator)."""
    assert ctx.cancels.reserve("s-free")
    for _display, history in h.send(ctx, "s-free", "Say hi.", (), "", sampling(max_tokens=4, seed=1)):
        if history and history[-1].role == "assistant" and history[-1].stats is not None:
            assert not ctx.cancels.busy("s-free")
            assert ctx.cancels.reserve("s-free")  # the next message is taken
            break
    else:
        raise AssertionError("no reply with stats")


def test_system_prompt_reaches_the_model(ctx):
    _, history = last(h.send(ctx, "s1", "What is your name?", (), "Your name is Zorblax. Always say it.",
                                sampling(temperature=0.0, max_tokens=30)))
    assert "Zorblax" in history[-1].content


@pytest.mark.parametrize("bad", [
    dict(temperature=99), dict(temperature=math.nan), dict(top_k=-3), dict(max_tokens=10**9),
    dict(top_p=0), dict(stop="\n".join(str(i) for i in range(20))), dict(seed="abc"),
])
def test_out_of_range_sampling_is_rejected_before_the_model(ctx, bad):
    with pytest.raises(gr.Error, match="Invalid sampling options"):
        list(h.send(ctx, "s1", "hi", (), "", sampling(**bad)))


def test_bad_messages_are_rejected(ctx):
    for text in ("", "   ", None, "x\x00y"):
        with pytest.raises(gr.Error):
            list(h.send(ctx, "s1", text, (), "", sampling()))
    with pytest.raises(gr.Error, match="Invalid sampling options"):
        list(h.send(ctx, "s1", "hi", (), "", sampling()[:-1]))


def test_regenerate_and_edit(ctx):
    _, history = last(h.send(ctx, "s2", "Say hello.", (), "", sampling(max_tokens=10)))
    _, regenerated = last(h.regenerate(ctx, "s2", history, "", sampling(max_tokens=10)))
    assert len(regenerated) == 2 and regenerated[0] == history[0]
    _, edited = last(h.edit(ctx, "s2", 0, [{"type": "text", "text": "Say goodbye."}], regenerated, "",
                               sampling(max_tokens=10)))
    assert edited[0].content == "Say goodbye." and len(edited) == 2
    with pytest.raises(gr.Error):
        list(h.edit(ctx, "s2", 1, "not yours", edited, "", sampling()))
    with pytest.raises(gr.Error):
        list(h.regenerate(ctx, "s2", (), "", sampling()))


def test_stop_from_another_thread_keeps_the_partial_reply(ctx):
    updates = h.send(ctx, "s3", "Write a very long story.", (), "", sampling(max_tokens=2000))
    seen = []
    for update in updates:
        seen.append(update)
        if update[1][-1].role == "assistant" and len(update[1][-1].content) > 20:
            threading.Thread(target=h.stop, args=(ctx, "s3")).start()
            stopped_at = time.monotonic()
            break
    rest = list(updates)
    assert time.monotonic() - stopped_at < 1.5
    final = rest[-1][1][-1]
    assert final.stats.finish_reason == "cancelled" and len(final.content) > 20
    assert "stopped" in rest[-1][0][-1]["content"]


def test_load_validates_names_and_reports_bad_files(ctx):
    for bad in ("../../etc/passwd", "/etc/passwd", "truncated.gguf\x00", None):
        with pytest.raises(gr.Error, match="Unknown model|Pick a model"):
            h.load_model(ctx, bad, [None, None, "f16", True, None, 512, None, None, None, None, None, None])
    with pytest.raises(gr.Error, match="Invalid load options"):
        h.load_model(ctx, "truncated.gguf", [10**9, None, "f16", True, None, 512, None, None, None, None, None, None])
    for name, expected in (("truncated.gguf", "truncated"), ("notes.gguf", "not a GGUF"),
                           ("escape-template.gguf", "sandbox")):
        status = h.load_model(ctx, name, [1024, None, "f16", True, None, 512, None, None, None, None, None, None])
        assert expected in status, status
    # After a failed load the app still chats once a good model is loaded.
    with pytest.raises(gr.Error, match="whole number or 'auto'"):
        h.load_model(ctx, "truncated.gguf", ["lots", "auto", "f16", True, "auto", 512, "auto", "auto", "auto", "auto", None, None])
    status = h.load_model(ctx, "SmolLM2-135M-Instruct Q4_1 (embedded)", ["1024", "auto", "f16", True, "auto", 512, "auto", "auto", "auto", "auto", None, None])
    assert status.startswith("**Ready**") and "context 1,024" in status
    _, history = last(h.send(ctx, "s4", "hi", (), "", sampling(max_tokens=5)))
    assert history[-1].content


def test_manager_refuses_load_while_generating(ctx, embedded_model):
    stream = ctx.manager.stream_chat([{"role": "user", "content": "Write a long story."}],
                                     SamplingOptions(max_tokens=2000), threading.Event())
    next(stream)
    with pytest.raises(BusyError):
        ctx.manager.load(LoadSpec(str(embedded_model)), busy_timeout_s=0.2)
    stream.close()
    assert ctx.manager.state().status == "ready" and not ctx.manager.state().generating


def test_preflight_errors_leave_a_loaded_model_alone(ctx, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        ctx.manager.load(LoadSpec(str(Path(tmp_path) / "nope.gguf")))
    assert ctx.manager.state().status == "ready"


def test_a_waiting_reply_shows_its_place_and_stop_leaves_the_line(ctx):
    busy = ctx.manager.stream_chat([{"role": "user", "content": "Write a very long story."}],
                                   SamplingOptions(max_tokens=2000), threading.Event())
    next(busy)  # one reply holds the model
    try:
        updates = h.send(ctx, "waiter", "Hello?", (), "", sampling(max_tokens=4))
        notices = []
        for update in updates:
            reply = update[1][-1]
            if reply.role == "assistant" and reply.notice:
                notices.append(reply.notice)
                threading.Thread(target=h.stop, args=(ctx, "waiter")).start()
                break
        rest = list(updates)
        assert notices == ["Waiting for the model: 1 reply ahead of you…"]
        assert rest[-1][1][-1].notice == "Stopped before the reply started." and not rest[-1][1][-1].content
        assert ctx.manager.queue_depth() == 0
    finally:
        busy.close()
    final = list(h.send(ctx, "after", "Hi", (), "", sampling(max_tokens=4)))[-1][1][-1]
    assert final.stats is not None  # the model is free again


def test_editing_an_earlier_message_asks_before_dropping_later_turns(ctx):
    _, history = last(h.send(ctx, "s-edit", "Say one.", (), "", sampling(max_tokens=4)))
    _, history = last(h.send(ctx, "s-edit", "Say two.", history, "", sampling(max_tokens=4)))
    assert len(history) == 4
    # the first message: its reply is replaced anyway, the second exchange (2 messages) would go
    pending, later = h.ask_edit(history, 0, [{"type": "text", "text": "Say three."}])
    assert later == 2 and pending == (0, "Say three.", 4, False)
    assert list(h.run_edit(ctx, "s-edit", pending, history, "", sampling(max_tokens=4))) == []  # not yet
    assert list(h.run_edit(ctx, "s-edit", None, history, "", sampling(max_tokens=4))) == []   # "Keep them"
    confirmed = h.confirm_edit(pending)
    assert confirmed == (0, "Say three.", 4, True) and h.confirm_edit(confirmed) is None
    with pytest.raises(gr.Error, match="changed since"):
        list(h.run_edit(ctx, "s-edit", confirmed, history[:2], "", sampling(max_tokens=4)))
    _, edited = last(h.run_edit(ctx, "s-edit", confirmed, history, "", sampling(max_tokens=4)))
    assert [m.content for m in edited[:1]] == ["Say three."] and len(edited) == 2
    # the last message drops nothing but its own reply: no question
    pending, later = h.ask_edit(history, 2, "Say four.")
    assert later == 0 and pending[3] is True
    with pytest.raises(gr.Error):
        h.ask_edit(history, 1, "not yours")
