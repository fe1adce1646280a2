"""Ask llama.cpp (in a child process) what compute buffers a configuration would reserve."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Optional

from services.paths import project_root

MIB = 1 << 20


def compute_buffers(model_path: str, n_ctx: int, n_gpu_layers: int, kv_type: str = "f16",
                    flash_attn: bool = True, n_ubatch: int = 512, timeout_s: float = 120) -> Optional[tuple[int, int]]:
    """``(gpu_bytes, host_bytes)`` of llama.cpp's compute buffers, or None if the dry run failed."""
    cmd = [sys.executable, "-m", "backends.dry_run", model_path, "--ctx", str(n_ctx),
           "--n-gpu-layers", str(n_gpu_layers), "--kv", kv_type, "--ubatch", str(n_ubatch)]
    if not flash_attn:
        cmd.append("--no-flash-attn")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=project_root())
        data = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    if "buffers" not in data:
        return None
    gpu = host = 0
    for b in data["buffers"]:
        if b["kind"] != "compute":
            continue
        size = int(b["mib"] * MIB)
        if b["device"].startswith("CUDA") and not b["device"].endswith("_Host"):
            gpu += size
        else:
            host += size
    return gpu, host
