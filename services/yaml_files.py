"""Read small YAML/JSON files from disk safely: a size cap, ``yaml.safe_load`` only, a depth cap."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_BYTES = 256 * 1024
MAX_DEPTH = 12


class DataFileError(ValueError):
    """The file cannot be read or parsed; the message names it."""


MAX_NODES = 100_000  # YAML aliases can make a small file a huge tree ("billion laughs")


def _check_shape(value: Any, name: str) -> None:
    """At most ``MAX_DEPTH`` levels and ``MAX_NODES`` values, counted as the tree unfolds (an alias
    counts every time it is used), so a crafted file stops early instead of hanging the app."""
    budget = [MAX_NODES]

    def visit(node: Any, level: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise DataFileError(f"{name}: more than {MAX_NODES} values (aliases unfolded)")
        if level > MAX_DEPTH:
            raise DataFileError(f"{name}: nested more than {MAX_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            visit(child, level + 1)

    visit(value, 0)


def load_data_file(path: Path) -> Any:
    import yaml

    try:
        if path.is_symlink():
            raise DataFileError(f"{path.name}: symbolic links are not read")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DataFileError(f"{path.name}: {size} bytes is larger than the {MAX_BYTES}-byte limit")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFileError(f"{path.name}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DataFileError(f"{path.name}: not UTF-8 text") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"{path.name}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first})") from None
    _check_shape(data, path.name)
    return data
