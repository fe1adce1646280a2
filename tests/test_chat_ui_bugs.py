"""Issue 12's chat bugs, checked without a browser: the built app's wiring and the handlers.

(tests/test_browser_chat_life.py checks the same in Chromium.)"""
from __future__ import annotations

import inspect
import os
import warnings

import gradio as gr
import pytest

from backends.manager import ModelManager
from core.chat_history import add_user_message, with_reply
from core.settings import AppSettings
from services.conversation_store import ConversationStore
from services.local_models import build_catalog
from ui import build_app, chat_handlers as h, conversation_handlers as ch
from ui.context import AppContext, CancelRegistry


@pytest.fixture()
def ctx(tmp_path):
    settings = AppSettings(data_dir=tmp_path)
    context = AppContext(settings, ModelManager(), lambda: build_catalog(None, settings.models_dir),
                         conversations=ConversationStore(tmp_path / "history.sqlite3"))
    yield context
    context.manager.close()


@pytest.fixture()
def app(ctx):
    return build_app(ctx)


def by_id(app, elem_id):
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def deps(app):
    return list(app.fns.values())


def test_bug1_the_message_box_is_no_output_of_the_streaming_handlers(app):
    message, api_only = by_id(app, "message"), by_id(app, "send-api")  # a hidden button only API clients press
    streaming = [d for d in deps(app) if (d.types_generator or d.api_name in ("regenerate", "edit"))
                 and all(t[0] != api_only._id for t in d.targets)]
    assert streaming
    for dep in streaming:
        assert message not in dep.outputs, f"{dep.api_name or dep.name} writes the message box while streaming"
    # The box is cleared by one quick step only, and every Enter reaches the server (no silent drop).
    (take,) = [d for d in deps(app) if message in d.outputs and all(t[0] != api_only._id for t in d.targets)]
    assert not take.types_generator and take.trigger_mode == "multiple"


def test_bug1_a_send_during_a_reply_is_refused_with_a_message_and_the_draft_stays(ctx):
    assert h.take_message(ctx, "tab", "first") == ("", "first")  # taken: the box is cleared once
    with pytest.warns(UserWarning, match="still being written"):
        box, taken = h.take_message(ctx, "tab", "second, typed meanwhile")
    assert box == gr.skip() and taken == ""  # the box keeps the draft; nothing is sent
    with pytest.warns(UserWarning, match="Type a message first"):
        assert h.take_message(ctx, "other-tab", "   ") == (gr.skip(), "")
    event = ctx.cancels.start("tab")  # the first reply starts on its reservation...
    ctx.cancels.finish("tab", event)   # ...and ends: the next message is taken
    assert h.take_message(ctx, "tab", "second") == ("", "second")


def test_a_stop_between_take_and_reply_start_is_not_lost():
    cancels = CancelRegistry()
    assert cancels.reserve("s")
    cancels.cancel("s")
    assert cancels.start("s").is_set()


def test_bug2_two_tabs_of_one_user_never_overwrite_each_other(ctx, capsys):
    def turn(current, history, text, tab):
        updates = [(None, add_user_message(history, text))]
        updates.append((None, with_reply(updates[0][1], f"{tab} reply")))
        *_, (display, history, current) = ch.persist(ctx, None, current, "", iter(updates))
        return current, history

    a_cur, a_hist = turn(None, (), "hello from A", "A")
    # Tab B opens the page: it restores A's conversation, and both go on writing in it.
    _, b_hist, b_cur, _, _ = ch.restore(ctx, None)
    a_cur, a_hist = turn(a_cur, a_hist, "A again", "A")
    b_cur, b_hist = turn(b_cur, b_hist, "B meanwhile", "B")
    assert "changed in another tab" in capsys.readouterr().out  # gr.Info outside a request prints
    assert b_cur[0] != a_cur[0]
    texts = {c.id: [m.content for m in ctx.conversations.load(None, c.id).history]
             for c in ctx.conversations.list(None)}
    assert texts[a_cur[0]] == ["hello from A", "A reply", "A again", "A reply"]
    assert texts[b_cur[0]] == ["hello from A", "A reply", "B meanwhile", "B reply"]


def test_bug2_import_and_new_chat_never_replace_a_conversation(ctx, tmp_path):
    cur, _ = None, ()
    *_, (_, _, cur) = ch.persist(ctx, None, None, "", iter([(None, with_reply(add_user_message((), "keep me"), "ok"))]))
    exported = ch.export_file(ctx, None, cur, ctx.conversations.load(None, cur[0]).history, "", "JSON", "keep me")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display, history, imported, _, title = ch.import_file(ctx, None, exported)
    assert imported[0] != cur[0] and title == "keep me (imported)" and history[0].content == "keep me"
    assert ch.new_conversation(ctx, "tab")[:3] == ([], (), None)
    assert len(ctx.conversations.list(None)) == 2


def test_bug3_the_chat_trash_icon_starts_a_new_conversation(app):
    chatbot = by_id(app, "chatbot")
    history_states = [b for b in app.blocks.values() if isinstance(b, gr.State) and b.value == ()]
    clears = [d for d in deps(app) if any(t[0] == chatbot._id and t[1] == "clear" for t in d.targets)]
    assert clears, "the chat's trash icon has no handler: it would clear the screen only"
    assert set(history_states) & set(clears[0].outputs), "the trash icon must empty what the model sees"


def test_bug4_user_errors_become_toasts_and_leave_the_outputs(app):
    regen = next(d for d in deps(app) if d.api_name == "regenerate")
    with pytest.warns(UserWarning, match="Nothing to regenerate yet"):
        out = list(regen.fn(type("R", (), {"session_hash": "x", "username": None, "headers": {}})(),
                            (), None, "", *[None] * (len(regen.inputs) - 3)))
    assert out == [tuple(gr.skip() for _ in regen.outputs)]


def test_bug5_library_handlers_are_queued_so_their_messages_reach_the_page(app):
    for name in ("reveal_model", "ask_delete", "cancel_download"):
        dep = next(d for d in deps(app) if d.api_name == name)
        assert dep.queue is not False, f"{name} runs outside the queue: a refusal would be an HTTP 500"


def test_bug6_messages_use_the_labels_users_see_and_too_many_threads_are_refused(ctx):
    from core.options import LoadOptions
    from ui.option_widgets import options_from_values, widget_values

    with pytest.raises(gr.Error) as err:
        options_from_values(LoadOptions, ("n_ctx",), [10], "load options")
    assert "Context (tokens)" in err.value.message and "n_ctx" not in err.value.message
    name = ctx.catalog().names[0]
    too_many = (os.cpu_count() or 1) + 62
    with pytest.raises(gr.Error, match="CPU core"):
        values = widget_values(LoadOptions, LoadOptions(n_ctx=1024, kv_type="f16"), h.LOAD_FIELDS)
        values[h.LOAD_FIELDS.index("n_threads")] = str(too_many)
        h.load_model(ctx, name, values)
    assert ctx.manager.state().status == "empty"  # refused before any load


def test_bug6_a_typed_number_is_never_swapped_for_a_suggestion(app):
    """A Dropdown with custom values picks its highlighted suggestion on Enter ("10" became 1024):
    optional numbers are text boxes, checked on Enter with the label users see."""
    from core.options import LoadOptions, SamplingOptions
    from ui.option_widgets import optional_number_fields

    for prefix, model in (("load-", LoadOptions), ("sampling-", SamplingOptions)):
        for name in optional_number_fields(model):
            widget = next((b for b in app.blocks.values() if getattr(b, "elem_id", None) == prefix + name), None)
            if widget is None:
                continue
            assert isinstance(widget, gr.Textbox), (name, type(widget).__name__)
            checks = [d for d in deps(app) if widget in d.inputs and (widget._id, "submit") in d.targets]
            assert checks, f"nothing checks {name} on Enter"
            with pytest.raises(gr.Error) as err:
                inspect.unwrap(checks[0].fn)("-5")  # the handler, without the toast wrapper
            assert widget.label in err.value.message and name not in err.value.message.split(":", 1)[1]
    context = by_id(app, "load-n_ctx")
    (check,) = [d for d in deps(app) if context in d.inputs and (context._id, "submit") in d.targets]
    with pytest.raises(gr.Error, match=r"Context \(tokens\) must be at least 128 \(got 10\)"):
        inspect.unwrap(check.fn)("10")
    assert inspect.unwrap(check.fn)("auto") is None and inspect.unwrap(check.fn)("4096") is None


def test_bug6_the_model_panel_can_show_the_loaded_options_after_a_reload(app):
    from core.options import LoadOptions
    from ui.option_widgets import options_from_values, widget_values

    loaded = LoadOptions(n_ctx=1024, n_threads=1, kv_type="q8_0", n_batch=256)
    shown = widget_values(LoadOptions, loaded, h.LOAD_FIELDS)
    assert options_from_values(LoadOptions, h.LOAD_FIELDS, shown, "load options") == loaded
    load_panel = by_id(app, "load-n_ctx")
    assert any(d.targets and d.targets[0][1] == "load" and load_panel in d.outputs for d in deps(app)), \
        "nothing sets the Model panel when the page (re)loads"


def test_bug7_loading_a_preset_sets_the_chats_sampling_widgets(app):
    from ui import presets_handlers

    (load,) = [d for d in deps(app) if d.api_name == "load_preset"]
    assert load.outputs[0].elem_id == "presets-status"
    assert [b.elem_id for b in load.outputs[1:]] == [f"sampling-{n}" for n in presets_handlers.SAMPLING_FIELDS]
    assert presets_handlers.SAMPLING_FIELDS == h.SAMPLING_FIELDS  # the chat reads them in this order


def test_an_edit_asks_before_anything_is_dropped(app):
    chatbot, row = by_id(app, "chatbot"), by_id(app, "confirm-edit")
    (ask,) = [d for d in deps(app) if any(t[0] == chatbot._id and t[1] == "edit" for t in d.targets)]
    assert not ask.types_generator and row in ask.outputs
    history_states = {b for b in app.blocks.values() if isinstance(b, gr.State) and b.value == ()}
    assert not history_states & set(ask.outputs), "asking must not change what the model sees"
    (run,) = [d for d in deps(app) if d.api_name == "edit"]
    assert history_states & set(run.outputs)
