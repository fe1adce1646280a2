"""What the app learns about this machine from real loads, kept in ``<data>/calibration.json``.

After a model has generated on a GPU, the worker's VRAM as NVML measures it minus the buffers
llama.cpp reported is that GPU's constant overhead (CUDA context, cuBLAS workspace). It replaces
the default in ``core.planner.Calibration`` for later plans on the same GPU model.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from core.planner import Calibration

FILE_NAME = "calibration.json"
MIB = 1 << 20


def _read(data_dir: Path) -> dict:
    try:
        data = json.loads((data_dir / FILE_NAME).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_calibration(data_dir: Path, gpu_name: Optional[str]) -> Calibration:
    cal = Calibration()
    entry = _read(data_dir).get("gpus", {}).get(gpu_name or "", {})
    overhead = entry.get("overhead_bytes")
    if isinstance(overhead, int) and 64 * MIB <= overhead <= 8192 * MIB:
        cal = replace(cal, gpu_overhead_bytes=overhead)
    return cal


def record_gpu_overhead(data_dir: Path, gpu_name: str, measured_bytes: int, buffers_bytes: int) -> Optional[int]:
    """Store ``measured - buffers`` for this GPU (a running mean over loads); returns it."""
    overhead = measured_bytes - buffers_bytes
    if not 64 * MIB <= overhead <= 8192 * MIB:
        return None  # implausible: another process, or a reading before the first decode
    data = _read(data_dir)
    gpus = data.setdefault("gpus", {})
    entry = gpus.setdefault(gpu_name, {"samples": 0})
    n = int(entry.get("samples", 0))
    previous = int(entry.get("overhead_bytes", overhead))
    entry["overhead_bytes"] = int((previous * n + overhead) / (n + 1))
    entry["samples"] = n + 1
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".calibration-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, data_dir / FILE_NAME)  # atomic: a crash never leaves half a file
    return entry["overhead_bytes"]
