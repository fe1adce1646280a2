"""A ``gr.Dropdown`` whose refusal of a value that is not one of its choices is a message to the
client, not a traceback in the app's log: Gradio prints a full traceback for every such refusal, so
a client posting names that are not in a list could fill the log at will (issue 13: one line per
refusal). A function, not a subclass: Gradio writes a ``.pyi`` stub next to every component
subclass's module."""
from __future__ import annotations

from typing import Any

import gradio as gr


def Dropdown(*args: Any, **kwargs: Any) -> gr.Dropdown:  # noqa: N802 (used where gr.Dropdown was)
    dropdown = gr.Dropdown(*args, **kwargs)
    check = dropdown.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return check(payload)
        except gr.Error as exc:
            raise gr.Error(exc.message, print_exception=False) from None

    dropdown.preprocess = preprocess
    return dropdown
