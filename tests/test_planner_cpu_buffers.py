"""On the CPU: the planner's weights, KV cache and compute buffer for the embedded model versus what
llama.cpp itself reports when the app really loads it, and versus a llama.cpp dry run."""
from __future__ import annotations

import pytest

from backends.base import LoadSpec
from backends.worker_client import WorkerBackend
from core.hardware import Hardware
from core.model_shape import shape_from_headers
from core.options import LoadOptions
from core.planner import evaluate
from services.dry_run import compute_buffers
from services.gguf_file import read_header

pytestmark = pytest.mark.real_model
MIB = 1 << 20
CPU = Hardware(gpus=(), ram_total_bytes=16 << 30, ram_available_bytes=12 << 30, cpu_physical_cores=2)


@pytest.mark.parametrize("ctx,kv,ubatch", [(1000, "f16", 512), (2048, "f16", 512), (4096, "q8_0", 512),
                                           (8192, "q4_0", 256), (2048, "f16", 128)])
def test_prediction_matches_llama_cpp_buffers(embedded_model, ctx, kv, ubatch):
    shape = shape_from_headers([read_header(embedded_model)])
    plan = evaluate(shape, CPU, 0, ctx, kv, n_ubatch=ubatch)
    backend = WorkerBackend("llama_cpp")
    try:
        info = backend.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=ctx, kv_type=kv, n_batch=ubatch)))
    finally:
        backend.unload()
    reported = {b.kind: int(b.mib * MIB) for b in info.buffers if b.kind in ("model", "KV", "compute")}
    # llama.cpp prints MiB with two decimals: allow that rounding (5 KiB) and nothing more for
    # weights and KV; the compute buffer is a fitted formula: within 8 MiB.
    assert abs(reported["model"] - plan.cpu.weights) <= 8 << 10
    assert abs(reported["KV"] - plan.cpu.kv_cache) <= 8 << 10
    assert abs(reported["compute"] - plan.cpu.compute) <= 8 * MIB
    dry = compute_buffers(str(embedded_model), ctx, 0, kv, n_ubatch=ubatch)
    assert dry is not None and abs(dry[1] - reported["compute"]) <= 8 << 10
