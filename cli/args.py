"""argparse helpers: flags generated from the options models, and one-line errors."""
from __future__ import annotations

import argparse
import sys
import typing
from typing import NoReturn

from pydantic import BaseModel, ValidationError

from core.options import describe_validation_error, field_specs, parse_number_list


class UsageError(Exception):
    """A bad command line. ``main`` prints it as one line and exits with status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_option_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> list[str]:
    """Add a flag for every field that declares ``cli``; return the field names added."""
    names = []
    for spec in field_specs(model):
        flag = spec["cli"]
        if not flag:
            continue
        annotation = spec["annotation"]
        help_text = spec["description"]
        if annotation is bool:
            parser.add_argument(flag, dest=spec["name"], action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif spec["list"]:
            parser.add_argument(flag, dest=spec["name"], type=number_list, default=None, metavar="A,B,...",
                                help=help_text)
        elif typing.get_origin(annotation) is typing.Literal:
            parser.add_argument(flag, dest=spec["name"], choices=typing.get_args(annotation),
                                default=None, help=help_text)
        else:
            is_float = float in (annotation, *typing.get_args(annotation))
            parser.add_argument(flag, dest=spec["name"], type=float if is_float else int, default=None,
                                metavar="X" if is_float else "N",
                                help=help_text + (f" ({spec['min']}..{spec['max']})" if spec["max"] else ""))
        names.append(spec["name"])
    return names


def number_list(text: str) -> tuple[float, ...]:
    try:
        return parse_number_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def options_from_args(model: type[BaseModel], args: argparse.Namespace, names: list[str]) -> BaseModel:
    values = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    try:
        return model(**values)
    except ValidationError as exc:
        flags = {spec["name"]: spec["cli"] for spec in field_specs(model) if spec["cli"]}
        raise UsageError(describe_validation_error(exc, "options", flags)) from None


def fail(message: str, code: int = 2) -> int:
    print(f"fitchat: error: {message}", file=sys.stderr)
    return code
