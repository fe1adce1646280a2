"""KV cache in RAM (llama.cpp's offload_kqv off): the option, its memory and speed in the planner
(described machines), and the optimiser choosing it only when it wins."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.hardware import GIB
from core.options import LoadOptions
from core.planner import evaluate, evaluate_as_asked, kv_bytes, optimise
from core.presets import parse_preset
from core.load_plan import ModelFacts, plan_load
from tests.test_planner import CPU_ONLY, gpu_machine, profile, shapes  # noqa: F401  (fixture)


def test_option_values_and_presets():
    assert LoadOptions().kv_placement == "auto" and LoadOptions().kv_placements == ("gpu", "ram")
    assert LoadOptions(kv_placement="ram").kv_placements == ("ram",)
    with pytest.raises(ValidationError):
        LoadOptions(kv_placement="disk")
    preset = parse_preset({"name": "p", "backend": "llama_cpp", "quantization": "Q4_K_M",
                           "model": {"repo": "a/b", "file": "m.gguf"},
                           "load": {"kv_placement": "auto", "n_ctx": 32768}}, "p.yaml")
    assert preset.load_options().kv_placement == "auto"


def test_kv_in_ram_moves_the_cache_and_frees_vram(shapes):
    s, hw = shapes["8b"], gpu_machine(8, bandwidth=448e9)
    vram = evaluate(s, hw, -1, 32768, "f16")
    ram = evaluate(s, hw, -1, 32768, "f16", kv_placement="ram")
    all_kv = kv_bytes(s, range(s.n_layer), 32768, "f16")
    assert vram.gpu.kv_cache == all_kv and ram.gpu.kv_cache == 0 and ram.cpu.kv_cache == all_kv
    assert ram.kv_placement == "ram" and vram.kv_placement == "gpu"
    assert ram.gpu.total == vram.gpu.total - all_kv  # weights and compute stay on the GPU
    assert ram.cpu.compute > vram.cpu.compute         # the CPU computes attention
    assert ram.tokens_per_s < vram.tokens_per_s       # same layers: the copies cost time
    assert any("KV cache" in r and "RAM" in r for r in ram.reasons)
    # nothing offloaded: nothing to move
    assert evaluate(s, hw, 0, 4096, kv_placement="ram").kv_placement == "gpu"


@pytest.mark.parametrize("machine", ["8g", "rtx3060ti-8g"])
def test_optimiser_keeps_kv_in_ram_only_when_it_wins(shapes, machine):
    s = shapes["8b"]
    hw = gpu_machine(8, bandwidth=448e9) if machine == "8g" else profile(machine)
    both = ("gpu", "ram")
    # 4k: the whole model and its cache fit in VRAM: the cache stays there
    short = optimise(s, hw, n_ctx=4096, kv_types=("f16",), kv_placements=both)
    assert short.kv_placement == "gpu" and short.fit == "full_gpu"
    # 32k: the f16 cache (4 GiB) pushes layers to the CPU; in RAM it lets every layer on the GPU
    in_vram = optimise(s, hw, n_ctx=32768, kv_types=("f16",))
    chosen = optimise(s, hw, n_ctx=32768, kv_types=("f16",), kv_placements=both)
    assert in_vram.fit == "partial" and in_vram.kv_placement == "gpu"
    assert chosen.kv_placement == "ram" and chosen.fit == "full_gpu" and chosen.tokens_per_s > in_vram.tokens_per_s
    assert any("KV cache in RAM: faster" in r for r in chosen.reasons)
    assert chosen.vram_bytes <= hw.gpus[0].free_bytes - 256 * (1 << 20)


def test_kv_in_ram_as_asked_and_on_a_cpu_only_machine(shapes):
    s = shapes["8b"]
    asked = evaluate_as_asked(s, gpu_machine(8), -1, 32768, kv_placement="ram")
    assert asked.kv_placement == "ram" and asked.fit == "full_gpu"
    cpu = optimise(s, CPU_ONLY, n_ctx=4096, kv_placements=("gpu", "ram"))
    assert cpu.fit == "cpu_only" and cpu.kv_placement == "gpu"


def test_presets_plan_with_the_placement(shapes):
    preset = parse_preset({"name": "p", "backend": "llama_cpp", "quantization": "Q4_K_M",
                           "model": {"repo": "a/b", "file": "m.gguf"},
                           "load": {"kv_placement": "ram", "n_ctx": 32768, "kv_type": "f16"}}, "p.yaml")
    assert plan_load(ModelFacts("llama_cpp", "8b", shapes["8b"]), gpu_machine(8), options=preset.load_options()).kv_placement == "ram"
    preset = parse_preset({"name": "p", "backend": "llama_cpp", "quantization": "Q4_K_M",
                           "model": {"repo": "a/b", "file": "m.gguf"},
                           "load": {"kv_placement": "gpu", "n_ctx": 32768, "kv_type": "f16"}}, "p.yaml")
    assert plan_load(ModelFacts("llama_cpp", "8b", shapes["8b"]), gpu_machine(8), options=preset.load_options()).kv_placement == "gpu"


@pytest.mark.real_model
def test_a_model_loads_and_answers_with_its_kv_cache_in_ram(embedded_model):
    import threading

    from backends.base import LoadSpec
    from backends.worker_client import WorkerBackend
    from backends.llama_cpp_engine import offload_kqv
    from core.options import SamplingOptions

    assert offload_kqv(LoadOptions(kv_placement="ram")) is False and offload_kqv(LoadOptions()) is True
    backend = WorkerBackend()
    try:
        backend.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=512, n_threads=2, kv_placement="ram")))
        stream = backend.stream_chat([{"role": "user", "content": "Hi"}], SamplingOptions(max_tokens=4, seed=1),
                                     threading.Event())
        assert "".join(stream) and stream.stats.completion_tokens >= 1
    finally:
        backend.unload()
