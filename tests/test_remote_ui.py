"""The Models tab's remote-engine handlers, without a browser, against a real llama_cpp.server."""
from __future__ import annotations

import dataclasses
import json
import threading

import gradio as gr
import pytest

from backends.manager import ModelManager
from backends.remote_engine import backend_for_store
from core.options import SamplingOptions
from core.settings import AppSettings
from services.remote_endpoints import RemoteEndpointStore
from tests.remote_servers import ALIAS, SERVER_KEY
from ui import remote_handlers as rh
from ui.context import AppContext

pytestmark = pytest.mark.real_model


class _Request:
    def __init__(self, username=None) -> None:
        self.username = username


ADMIN, USER = _Request("alice"), _Request("bob")


@pytest.fixture
def ctx(tmp_path):
    settings = AppSettings(data_dir=tmp_path, auth=(("alice", "password1"), ("bob", "password2")), admins=("alice",))
    store = RemoteEndpointStore(tmp_path)
    manager = ModelManager(backend_factory=backend_for_store(store))
    yield AppContext(settings, manager, lambda: None, remotes=store)
    manager.close()


def test_add_list_load_chat_remove(ctx, server):
    status, table, picker, key_box = rh.add(ctx, ADMIN, "box", server.url, SERVER_KEY)
    assert "Added **box**" in status and key_box == ""
    assert server.url in table and SERVER_KEY not in table + status + json.dumps(picker.choices)
    status, models = rh.list_models(ctx, ADMIN, "box")
    assert models.choices == [(ALIAS, ALIAS)] and "1 model" in status
    status = rh.load(ctx, ADMIN, "box", ALIAS)
    assert status.startswith("**Ready**") and "remote engine **box**" in status
    stream = ctx.manager.stream_chat([{"role": "user", "content": "Hi"}], SamplingOptions(max_tokens=6),
                                     threading.Event())
    assert "".join(stream) and stream.stats.decode_tokens_per_s > 0
    assert "in use" in rh.table(ctx)[0]
    status, table, _ = rh.remove(ctx, ADMIN, "box")
    assert "Its model was unloaded" in status and ctx.manager.state().status == "empty"
    assert "No remote engines" in table


def test_only_admins_change_or_use_endpoints(ctx, server):
    ctx.remotes.add("box", server.url, SERVER_KEY)
    for call in (lambda: rh.add(ctx, USER, "x", server.url, None), lambda: rh.list_models(ctx, USER, "box"),
                 lambda: rh.load(ctx, USER, "box", ALIAS), lambda: rh.remove(ctx, USER, "box")):
        with pytest.raises(gr.Error, match="Only an admin"):
            call()
    assert ctx.remotes.names() == ["box"] and ctx.manager.state().status == "empty"


@pytest.mark.parametrize("name, url, why", [
    ("box", "file:///etc/passwd", "only http"), ("../etc", "http://a", "endpoint name"),
    ("box", "http://me:pw@a", "user name or password"), (["x"], "http://a", "endpoint name"),
])
def test_bad_endpoints_are_refused_server_side(ctx, name, url, why):
    with pytest.raises(gr.Error, match=why):
        rh.add(ctx, ADMIN, name, url, None)
    assert ctx.remotes.names() == []


def test_unknown_or_unreachable_endpoints_are_plain_messages(ctx, server):
    with pytest.raises(gr.Error, match="no remote endpoint named 'ghost'"):
        rh.list_models(ctx, ADMIN, "ghost")
    rh.add(ctx, ADMIN, "down", "http://127.0.0.1:9", None)
    with pytest.raises(gr.Error, match="Cannot reach the remote engine 'down'"):
        rh.list_models(ctx, ADMIN, "down")
    rh.add(ctx, ADMIN, "badkey", server.url, "not-the-key")
    with pytest.raises(gr.Error, match="refused its API key \\(HTTP 401\\)") as err:
        rh.list_models(ctx, ADMIN, "badkey")
    assert "not-the-key" not in str(err.value)
    with pytest.raises(gr.Error, match="Pick one of the endpoint's models"):
        rh.load(ctx, ADMIN, "badkey", {"evil": 1})


def test_without_logins_the_one_user_is_the_admin(ctx, server):
    ctx.settings = dataclasses.replace(ctx.settings, auth=(), admins=())
    assert "Added" in rh.add(ctx, _Request(None), "box", server.url, SERVER_KEY)[0]


def test_resources_tab_shows_the_remote_speed_and_errors(tmp_path, server):
    from backends.remote_engine import RemoteHealth
    from ui.resources_handlers import placement_text

    settings = AppSettings(data_dir=tmp_path)
    store, health = RemoteEndpointStore(tmp_path), RemoteHealth()
    manager = ModelManager(backend_factory=backend_for_store(store, health))
    ctx = AppContext(settings, manager, lambda: None, remotes=store, remote_health=health)
    try:
        rh.add(ctx, ADMIN, "box", server.url, SERVER_KEY)
        rh.load(ctx, ADMIN, "box", ALIAS)
        list(manager.stream_chat([{"role": "user", "content": "Hi"}], SamplingOptions(max_tokens=6),
                                 threading.Event()))
        card = placement_text(ctx, None)
        assert "remote engine **box**" in card and "Replies: 1 · errors: 0" in card and "tok/s" in card
        manager.load(dataclasses.replace(manager.state().spec,
                                         options=manager.state().spec.options.model_copy(update={"timeout_s": 1.0})))
        server.pause()
        try:
            with pytest.raises(Exception, match="timeout"):
                list(manager.stream_chat([{"role": "user", "content": "Hi"}], SamplingOptions(max_tokens=4),
                                         threading.Event()))
        finally:
            server.resume()
        card = placement_text(ctx, None)
        assert "errors: 1" in card and "Last error" in card and "timeout" in card
        assert manager.state().status == "ready"  # the app keeps serving; a retry can work
    finally:
        manager.close()


@pytest.mark.parametrize("bad", [0, 0.5, 3601, "soon", float("nan"), [30], True])
def test_reply_timeout_out_of_range_is_refused_before_loading(ctx, server, bad):
    rh.add(ctx, ADMIN, "box", server.url, SERVER_KEY)
    with pytest.raises(gr.Error, match="reply timeout"):
        rh.load(ctx, ADMIN, "box", ALIAS, bad)
    assert ctx.manager.state().status == "empty"


def test_reply_timeout_set_in_the_panel_reaches_the_load(ctx, server):
    rh.add(ctx, ADMIN, "box", server.url, SERVER_KEY)
    assert rh.load(ctx, ADMIN, "box", ALIAS, 45).startswith("**Ready**")
    assert ctx.manager.state().spec.options.timeout_s == 45.0
    assert rh.load(ctx, ADMIN, "box", ALIAS, None).startswith("**Ready**")
    assert ctx.manager.state().spec.options.timeout_s == rh.TIMEOUT_FIELD.default
