"""Read a local GGUF's header (never its weights) with the defensive parser."""
from __future__ import annotations

import os
from pathlib import Path

from core.gguf_header import GGUFError, GGUFHeader, Limits, parse_header


def read_header(path: str | os.PathLike, limits: Limits = Limits()) -> GGUFHeader:
    """The header of the GGUF at ``path``; GGUFError with a readable message otherwise."""
    p = Path(path)
    if not p.exists():
        raise GGUFError(f"model file not found: {p}")
    if not p.is_file():
        raise GGUFError(f"not a file: {p}")
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            return parse_header(fh.read, file_size=size, limits=limits)
    except PermissionError:
        raise GGUFError(f"no permission to read {p}") from None
    except OSError as exc:
        raise GGUFError(f"cannot read {p}: {exc.strerror or exc}") from None
