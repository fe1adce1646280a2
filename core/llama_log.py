"""Read what llama.cpp logs about its memory: ``<fn>: <DEVICE> <kind> buffer size = <n> MiB``."""
from __future__ import annotations

import re

_BUFFER_LINE = re.compile(
    r"^(?P<fn>[A-Za-z_]+):\s+(?P<device>[A-Za-z0-9_]+)\s+(?P<kind>[A-Za-z_]+) buffer size =\s*(?P<mib>[0-9.]+) MiB\s*$"
)


def parse_buffer_line(line: str) -> tuple[str, str, float] | None:
    """``(device, kind, MiB)`` for a buffer-size line, else None."""
    match = _BUFFER_LINE.match(line.strip())
    if not match:
        return None
    return match["device"], match["kind"], float(match["mib"])


def is_error_line(line: str) -> bool:
    low = line.lower()
    return "error" in low or "failed" in low or "ggml_assert" in low or "out of memory" in low
