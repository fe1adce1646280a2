"""A preset that names a remote engine: schema, the Presets tab's row and its Load, against a real
llama_cpp.server (no protocol mocks)."""
from __future__ import annotations

import threading

import gradio as gr
import pytest

from backends.manager import ModelManager
from backends.remote_engine import backend_for_store
from core.options import SamplingOptions
from core.presets import PresetError, parse_preset
from core.settings import AppSettings
from services.hardware import probe
from services.local_models import build_catalog
from services.remote_endpoints import RemoteEndpointStore
from tests.remote_servers import ALIAS, SERVER_KEY
from ui import presets_handlers as h
from ui.context import AppContext

REMOTE = {"name": "Box chat", "backend": "remote", "endpoint": "box", "model": ALIAS,
          "load": {"timeout_s": 30}, "sampling": {"temperature": 0.2}}


def test_a_remote_preset_parses_with_its_endpoint_in_the_load_options():
    preset = parse_preset(REMOTE, "box.yaml")
    options = preset.load_options()
    assert (options.endpoint, options.timeout_s, preset.model.id) == ("box", 30.0, ALIAS)


@pytest.mark.parametrize("change, why", [
    ({"endpoint": None}, "needs endpoint"), ({"model": {"embedded": True}}, "needs endpoint"),
    ({"model": ""}, "model"), ({"endpoint": "../x"}, "endpoint"),
    ({"load": {"n_gpu_layers": 3}}, "n_gpu_layers"), ({"load": {"endpoint": "other"}}, "load.endpoint"),
    ({"shape": {"n_layer": 2}}, "shape"), ({"requirements": {"min_vram_gib": 8}}, "requirements"),
    ({"url": "http://x"}, "url"),
])
def test_bad_remote_presets_name_the_problem(change, why):
    with pytest.raises(PresetError, match=why):
        parse_preset({**REMOTE, **change}, "box.yaml")


def test_local_backends_refuse_an_endpoint_or_a_bare_model_id():
    local = {"name": "x", "backend": "llama_cpp", "quantization": "Q4_0", "model": {"embedded": True}}
    parse_preset(local, "x.yaml")
    for change in ({"endpoint": "box"}, {"model": "some-id"}, {"model": {"id": "some-id"}}, {"quantization": ""}):
        with pytest.raises(PresetError):
            parse_preset({**local, **change}, "x.yaml")


@pytest.fixture
def ctx(tmp_path):
    settings = AppSettings(data_dir=tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "box-chat.yaml").write_text(
        f"name: Box chat\nbackend: remote\nendpoint: box\nmodel: {ALIAS}\nload: {{timeout_s: 30}}\n"
        "sampling: {temperature: 0.2}\n")
    (tmp_path / "presets" / "ghost-chat.yaml").write_text(
        f"name: Ghost chat\nbackend: remote\nendpoint: ghost\nmodel: {ALIAS}\n")
    store = RemoteEndpointStore(tmp_path)
    manager = ModelManager(backend_factory=backend_for_store(store))
    context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir),
                         hardware=lambda: probe(tmp_path, measure_ram_bandwidth=False), remotes=store)
    yield context
    manager.close()


@pytest.mark.real_model
def test_presets_tab_shows_and_loads_a_remote_preset(ctx, server):
    ctx.remotes.add("box", server.url, SERVER_KEY)
    _, table, _, dropdown = h.refresh(ctx, h.THIS_MACHINE, "Fastest")
    row = next(r for r in table.split("<tr data-preset=") if r.startswith('"user/box-chat"'))
    assert "Remote" in row and "runs on box" in row and f"{ALIAS} on box" in row
    ghost = next(r for r in table.split("<tr data-preset=") if r.startswith('"user/ghost-chat"'))
    assert "Cannot plan" in ghost and "not stored here" in ghost
    assert SERVER_KEY not in table
    status, *sampling = h.load_preset(ctx, "user/box-chat")
    assert status.startswith("**Ready**") and "box" in status
    state = ctx.manager.state()
    assert state.spec.backend == "remote" and state.spec.options.timeout_s == 30.0
    assert 0.2 in sampling
    stream = ctx.manager.stream_chat([{"role": "user", "content": "Hi"}], SamplingOptions(max_tokens=4),
                                     threading.Event())
    assert "".join(stream)


def test_a_preset_naming_an_unknown_endpoint_is_a_clear_message(ctx):
    with pytest.raises(gr.Error, match="'ghost', which is not stored here"):
        h.load_preset(ctx, "user/ghost-chat")
    assert ctx.manager.state().status == "empty"
