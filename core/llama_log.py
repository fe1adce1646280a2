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


_OVERRIDE_LINE = re.compile(r"^tensor (?P<name>\S+) \(.*\) buffer type overridden to (?P<buft>\S+)")


def parse_override_line(line: str) -> tuple[str, str] | None:
    """``(tensor, buffer type)`` for llama.cpp's "tensor X (...) buffer type overridden to CPU", else None."""
    match = _OVERRIDE_LINE.match(line.strip())
    return (match["name"], match["buft"]) if match else None


def expert_layers_in_ram(overridden: list[tuple[str, str]]) -> int:
    """How many blocks had expert tensors placed in host memory (measured expert offload)."""
    blocks = {m[1] for name, buft in overridden if buft.startswith("CPU") and (m := _EXPERT_BLOCK.match(name))}
    return len(blocks)


_EXPERT_BLOCK = re.compile(r"^blk\.(\d+)\.ffn_\w*exps\.")
