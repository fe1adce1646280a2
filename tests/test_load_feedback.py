"""Bug 8 without a browser: the "Unloading <old> → loading <new>… N s" line (ui.load_feedback) and
its place next to each Load button (chat Model panel, Library, Presets).

(tests/test_browser_model_panel.py checks the same in Chromium.)"""
from __future__ import annotations

import gradio as gr
import pytest

from backends.base import LoadSpec, ModelInfo
from backends.manager import ManagerState
from tests.test_chat_ui_bugs import app, by_id, ctx, deps  # noqa: F401 (fixtures)
from ui.load_feedback import LoadRuns


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready(name: str) -> ManagerState:
    info = ModelInfo(name=name + ".gguf", path="/m/" + name, backend="llama_cpp", n_ctx=2048, n_ctx_train=8192,
                     n_layer=30, n_gpu_layers=0, gpu_offload_supported=False, n_threads=2, kv_type="f16",
                     flash_attn=True, template_origin="gguf", load_seconds=1.0, file_bytes=1)
    return ManagerState(status="ready", spec=LoadSpec("/m/" + name, display_name=name), info=info)


def test_the_line_names_both_models_ticks_the_seconds_then_says_what_came_of_it():
    clock = Clock()
    runs = LoadRuns(clock)
    assert runs.line("s1", ready("Old")) == (None, False)  # nothing started in this tab
    assert runs.start("s1", "New", ready("Old")) == "Unloading **Old** → loading **New**… 0 s"
    clock.now += 3.2
    text, running = runs.line("s1", ManagerState(status="loading"))
    assert (text, running) == ("Unloading **Old** → loading **New**… 3 s", True)
    assert runs.line("s2", ManagerState(status="loading")) == (None, False)  # another tab started nothing
    runs.finish("s1")
    assert runs.line("s1", ready("New")) == ("✓ **New** loaded in 3.2 s", False)


def test_with_nothing_loaded_it_says_loading_only():
    runs = LoadRuns(Clock())
    assert runs.start("s", "New", ManagerState(status="empty")) == "Loading **New**… 0 s"


@pytest.mark.parametrize("how, state, said", [
    ("refused", ready("Old"), "✗ **New** not loaded: New does not fit on this machine"),
    ("failed", ManagerState(status="failed", error="out of memory"), "✗ **New** did not load: out of memory"),
    ("kept", ready("Old"), "✗ **New** was not loaded (the message says why); **Old** is still loaded."),
])
def test_a_load_that_did_not_happen_says_so(how, state, said):
    runs = LoadRuns(Clock())
    runs.start("s", "New", ready("Old"))
    if how == "refused":
        runs.refused("s", "New does not fit on this machine")
    runs.finish("s")
    assert runs.line("s", state) == (said, False)


def _parent_children(app, block):
    for parent in app.blocks.values():
        children = getattr(parent, "children", None) or []
        if block in children:
            return parent, children
    raise AssertionError(f"{block.elem_id} has no parent")


@pytest.mark.parametrize("button_id, line_id", [("load", "load-feedback"), ("library-load", "library-load-feedback"),
                                                ("presets-load", "presets-load-feedback"),
                                                ("remote-load", "remote-load-feedback")])
def test_each_load_button_has_its_line_right_under_it_and_starts_it_at_once(app, button_id, line_id):
    button, line = by_id(app, button_id), by_id(app, line_id)
    assert isinstance(line, gr.Markdown)
    row, _ = _parent_children(app, button)
    _, siblings = _parent_children(app, row)
    assert siblings.index(line) == siblings.index(row) + 1, "the line is not right under the button's row"
    (start,) = [d for d in deps(app) if (button._id, "click") in d.targets and line in d.outputs]
    assert start.concurrency_limit is None, "the line's first words would wait behind other work"
    (load,) = [d for d in deps(app) if d.api_name == {"load": "load_model", "library-load": "load_library_model",
                                                       "presets-load": "load_preset",
                                                       "remote-load": "load_remote_model"}[button_id]]
    assert load.trigger_after == start._id, "the load does not follow the line's first words"
