"""CPU facts the backends need at load time."""
from __future__ import annotations

import os


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to read /proc: fall back to logical CPUs
        n = None
    return max(1, n or os.cpu_count() or 1)
