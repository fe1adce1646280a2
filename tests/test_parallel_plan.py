"""The default number of parallel replies (slots) from free memory, the plan's memory with every
slot's KV cache, a clear refusal of more slots than fit, and the gate that lets N replies or one load
use the model."""
from __future__ import annotations

import threading
import time

import pytest

from backends.model_gate import ModelGate
from core.hardware import GIB, GpuInfo, Hardware
from core.parallel_plan import DEFAULT_MAX_PARALLEL, choose_parallel, with_slots
from core.placement import slots_text
from core.plan import MemoryBreakdown, Plan

MIB = 1 << 20


def plan(gpu_kv: int = 0, cpu_kv: int = 0, gpu_total: int = 0, cpu_total: int = 0) -> Plan:
    return Plan(fit="full_gpu" if gpu_total else "cpu_only", backend="llama_cpp", n_layer=32, n_gpu_layers=33,
                n_ctx=8192, kv_type="f16", flash_attn=True,
                gpu=MemoryBreakdown(weights=gpu_total - gpu_kv, kv_cache=gpu_kv),
                cpu=MemoryBreakdown(weights=cpu_total - cpu_kv, kv_cache=cpu_kv), tokens_per_s=50.0)


def machine(gpu_free: int = 0, ram_free: int = 64 * GIB) -> Hardware:
    gpus = (GpuInfo(0, "GPU", 24 * GIB, gpu_free),) if gpu_free else ()
    return Hardware(gpus=gpus, ram_total_bytes=128 * GIB, ram_available_bytes=ram_free)


def test_roomy_machine_gets_the_default_most():
    choice = choose_parallel(plan(gpu_kv=1 * GIB, gpu_total=6 * GIB, cpu_total=1 * GIB), machine(gpu_free=22 * GIB),
                             GIB, 256 * MIB)
    assert choice.n_parallel == DEFAULT_MAX_PARALLEL


def test_tight_gpu_gets_fewer_slots_and_says_why():
    # 6 GiB planned on a GPU with 9 GiB free: 2.75 GiB left after the margin, half of it for KV caches
    choice = choose_parallel(plan(gpu_kv=1 * GIB, gpu_total=6 * GIB, cpu_total=1 * GIB), machine(gpu_free=9 * GIB),
                             GIB, 256 * MIB)
    assert choice.n_parallel == 2
    assert "1.00 GiB KV cache" in choice.reason and "GPU" in choice.reason


def test_full_machine_still_gets_one_slot():
    choice = choose_parallel(plan(gpu_kv=2 * GIB, gpu_total=20 * GIB, cpu_total=1 * GIB), machine(gpu_free=21 * GIB),
                             GIB, 256 * MIB)
    assert choice.n_parallel == 1 and "less than half" in choice.reason


def test_a_cpu_only_plan_gets_one_slot_unless_asked():
    base = plan(cpu_kv=GIB // 4, cpu_total=2 * GIB)
    assert choose_parallel(base, machine(ram_free=64 * GIB), GIB, 0).n_parallel == 1
    assert with_slots(base, machine(ram_free=64 * GIB), 4, GIB, 0).cpu.kv_cache == GIB


def test_plan_with_slots_counts_every_kv_cache():
    base = plan(gpu_kv=1 * GIB, gpu_total=6 * GIB, cpu_total=1 * GIB)
    slotted = with_slots(base, machine(gpu_free=22 * GIB), 3, GIB, 256 * MIB)
    assert slotted.gpu.kv_cache == 3 * GIB and slotted.gpu.total == base.gpu.total + 2 * GIB
    assert slotted.extra["n_parallel"] == 3 and slotted.extra["parallel_reason"] == "as asked"
    auto = with_slots(base, machine(gpu_free=22 * GIB), None, GIB, 256 * MIB)
    assert auto.extra["n_parallel"] == DEFAULT_MAX_PARALLEL
    assert "4 slots" in slots_text(4, auto) and "default most" in slots_text(4, auto)
    assert slots_text(1, None) == "1 slot: one reply at a time"


def test_more_slots_than_fit_are_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"8 parallel replies need 13\.0 GiB on the GPU.*fewer parallel"):
        with_slots(plan(gpu_kv=1 * GIB, gpu_total=6 * GIB, cpu_total=1 * GIB), machine(gpu_free=9 * GIB), 8,
                   GIB, 256 * MIB)


def test_gate_lets_n_replies_run_and_a_load_waits_for_all_of_them():
    gate = ModelGate(2)
    assert gate.seat.acquire(timeout=0.1) and gate.seat.acquire(timeout=0.1)
    assert gate.seat.locked() and not gate.seat.acquire(timeout=0.05)
    assert not gate.acquire_exclusive(timeout=0.05)  # replies are running
    gate.seat.release()
    assert not gate.seat.locked()
    loaded = []
    loader = threading.Thread(target=lambda: loaded.append(gate.acquire_exclusive(timeout=5)))
    loader.start()
    time.sleep(0.1)
    assert gate.seat.locked() and not gate.seat.acquire(timeout=0.05)  # a waiting load is not starved
    gate.seat.release()
    loader.join()
    assert loaded == [True] and gate.running() == 0
    gate.release_exclusive()
    gate.set_seats(4)
    assert all(gate.seat.acquire(timeout=0.1) for _ in range(4)) and gate.running() == 4
