"""Read small YAML/JSON files from disk safely: a size cap, ``yaml.safe_load`` only, a depth cap."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_BYTES = 256 * 1024
MAX_DEPTH = 12


class DataFileError(ValueError):
    """The file cannot be read or parsed; the message names it."""


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


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
    if _depth(data) > MAX_DEPTH:
        raise DataFileError(f"{path.name}: nested more than {MAX_DEPTH} levels deep")
    return data
