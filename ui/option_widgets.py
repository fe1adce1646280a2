"""Build Gradio inputs from a pydantic options model, and options back from their values.

The model's field declarations (range, step, title, description) are the single source of truth;
the values coming back are validated by the same model on the server, whatever the client sent.
"""
from __future__ import annotations

import typing
from typing import Any, Sequence

import gradio as gr
from pydantic import BaseModel, ValidationError

from core.options import describe_validation_error, field_specs, parse_number_list
from ui.quiet_dropdown import Dropdown


def _literal_choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return None


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def build_widgets(model: type[BaseModel], values: BaseModel | None = None,
                  only: Sequence[str] | None = None, elem_prefix: str = "") -> dict[str, gr.components.Component]:
    """One component per field, in declaration order."""
    widgets = {}
    for spec in field_specs(model):
        name = spec["name"]
        if only is not None and name not in only:
            continue
        default = getattr(values, name) if values is not None else spec["default"]
        common = dict(label=spec["title"], info=spec["description"], elem_id=f"{elem_prefix}{name}")
        annotation = spec["annotation"]
        choices = _literal_choices(annotation)
        if annotation is bool:
            widget = gr.Checkbox(value=bool(default), **common)
        elif choices:
            widget = Dropdown(choices=choices, value=default, **common)
        elif name == "stop":
            widget = gr.Textbox(value="\n".join(default or ()), lines=2, placeholder="one per line", **common)
        elif annotation is str:
            widget = gr.Textbox(value=default or "", lines=2, max_lines=12, **common)
        elif spec["empty"]:
            # Optional number: "auto"/"random" or a value. A text box, not a Dropdown with custom values:
            # Enter there picks the highlighted suggestion (typing 10 gave 1024). A Number box cannot be empty.
            common["info"] = _with_suggestions(spec)
            widget = gr.Textbox(value=_shown(spec, default), placeholder=spec["empty"], lines=1, max_lines=1,
                                **common)
        elif spec["min"] is None or spec["max"] is None:
            is_int = int in (annotation, *typing.get_args(annotation))
            widget = gr.Number(value=default, precision=0 if is_int else None,
                               minimum=spec["min"], maximum=spec["max"], **common)
        else:
            lo = spec["min"] + (spec["step"] or 0) if spec["exclusive_min"] else spec["min"]
            widget = gr.Slider(minimum=lo, maximum=spec["max"], step=spec["step"], value=default, **common)
        widgets[name] = widget
    return widgets


def _with_suggestions(spec: dict) -> str:
    typical = ", ".join(str(v) for v in spec["suggest"])
    example = "e.g. 3,1" if spec["list"] else f"e.g. {typical}" if typical else ""
    return (f"{spec['description']} Type {'numbers' if spec['list'] else 'a number'} or {spec['empty']}"
            + (f" ({example})." if example else "."))


def _shown(spec: dict, value: Any) -> str:
    if value is None:
        return spec["empty"]
    return ",".join(f"{v:g}" for v in value) if spec["list"] else str(value)


def optional_number_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields ``build_widgets`` shows as a text box holding a number or the "empty" word."""
    return tuple(spec["name"] for spec in field_specs(model) if spec["empty"])


def check_on_enter(model: type[BaseModel], widgets: dict[str, gr.components.Component], what: str) -> None:
    """Enter in (or leaving) an optional-number box checks it at once: a wrong value is said in a
    toast naming the label ("Context (tokens) must be at least 128"), and the box keeps what was typed."""
    for name in optional_number_fields(model):
        widget = widgets.get(name)
        if widget is None:
            continue

        def check(value, name=name):
            options_from_values(model, (name,), (value,), what)

        gr.on([widget.submit, widget.blur], check, widget, None, api_visibility="private",
              concurrency_id="check-option", concurrency_limit=None)


def widget_values(model: type[BaseModel], values: BaseModel, only: Sequence[str]) -> list[Any]:
    """What each widget of ``build_widgets`` shows for ``values`` (e.g. the loaded model's options
    after a page reload), in ``only``'s order."""
    specs = {spec["name"]: spec for spec in field_specs(model)}
    out = []
    for name in only:
        spec, value = specs[name], getattr(values, name, None)
        if name == "stop":
            out.append("\n".join(value or ()))
        elif spec["empty"]:
            out.append(_shown(spec, value))
        else:
            out.append(value)
    return out


def options_from_values(model: type[BaseModel], names: Sequence[str], values: Sequence[Any],
                        what: str) -> BaseModel:
    """Validate what a client sent; raise gr.Error with a readable message if it is wrong."""
    if len(names) != len(values):
        raise gr.Error(f"Invalid {what}: expected {len(names)} values, got {len(values)}.")
    data = {}
    specs = {spec["name"]: spec for spec in field_specs(model)}
    for name, value in zip(names, values):
        spec = specs.get(name)
        if spec and spec["empty"] and isinstance(value, str):
            text = value.strip()
            if text.lower() in ("", spec["empty"]):
                value = None
            elif spec["list"]:
                try:
                    value = parse_number_list(text, spec["title"])
                except ValueError as exc:
                    raise gr.Error(f"Invalid {what}: {exc}") from None
            else:
                try:
                    value = int(text)
                except ValueError:
                    raise gr.Error(f"Invalid {what}: {spec['title']} must be a whole number or "
                                   f"{spec['empty']!r} (got {text[:40]!r})") from None
        if name == "stop":
            if value is None:
                value = ()
            elif isinstance(value, str):
                value = tuple(line for line in value.splitlines() if line)
        elif value == "" or value is None:
            value = None
            if name in model.model_fields and not _is_optional(model.model_fields[name].annotation):
                continue  # take the declared default
        data[name] = value
    try:
        return model(**data)
    except ValidationError as exc:
        labels = {spec["name"]: spec["title"] for spec in field_specs(model)}
        raise gr.Error(describe_validation_error(exc, what, labels)) from None
    except (TypeError, ValueError) as exc:
        raise gr.Error(f"Invalid {what}: {exc}") from None
