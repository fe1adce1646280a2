"""core.placement: the placement card's text and the other-processes VRAM rule, from plain data."""
from __future__ import annotations

from dataclasses import replace

from core.placement import (LoadedModel, decode_uses_cpu, device_of, layers_on_gpu, measured_breakdown, placement_card,
                            vram_warnings)
from core.plan import MemoryBreakdown, Plan
from core.resources import GIB, MIB, GpuSample, VramProcess

EMBEDDED_CPU = (("CPU_Mapped", "model", 92.1), ("CPU", "output", 0.19), ("CPU", "KV", 90.0), ("CPU", "compute", 98.25))
PARTIAL = (("CPU_Mapped", "model", 2000.0), ("CUDA0", "model", 3992.5), ("CPU", "KV", 480.0), ("CUDA0", "KV", 512.0),
           ("CUDA0", "compute", 296.0), ("CUDA_Host", "compute", 16.0), ("CPU", "output", 0.5))


def model(buffers=PARTIAL, n_gpu_layers=17, offload=True, n_layer=32, **kw) -> LoadedModel:
    return LoadedModel("Llama-3.1-8B Q4_K_M", n_layer, n_gpu_layers, offload, 8192, "q8_0", True, buffers, 4242, **kw)


def plan(gpu_gib=(3.9, 0.5, 0.3, 0.6), cpu_gib=(2.0, 0.45, 0.02, 0.0), n_gpu_layers=17, fit="partial",
         tokens=30.0) -> Plan:
    gib = [MemoryBreakdown(*(int(x * GIB) for x in parts)) for parts in (gpu_gib, cpu_gib)]
    return Plan(fit, "llama_cpp", 32, n_gpu_layers, 8192, "q8_0", True, gib[0], gib[1], tokens)


def test_devices_and_purposes_from_buffer_lines():
    devices = ("CUDA0", "CUDA1", "ROCm0", "Vulkan2", "Metal", "CPU", "CPU_Mapped", "CUDA_Host", "CPU_REPACK")
    assert [device_of(d) for d in devices] == ["GPU0", "GPU1", "GPU0", "GPU2", "GPU0", "CPU", "CPU", "CPU", "CPU"]
    parts = measured_breakdown(PARTIAL)
    assert list(parts) == ["GPU0", "CPU"]
    assert parts["GPU0"] == MemoryBreakdown(int(3992.5 * MIB), 512 * MIB, 296 * MIB)
    assert parts["CPU"] == MemoryBreakdown(2000 * MIB, 480 * MIB, int(16.5 * MIB))
    assert layers_on_gpu(32, -1, True) == (33, 33) and layers_on_gpu(32, 17, True) == (17, 33)
    assert layers_on_gpu(32, 99, True) == (33, 33) and layers_on_gpu(32, -1, False) == (0, 33)


def test_which_loads_decode_on_the_cpu():
    full_gpu = (("CUDA0", "model", 4000.0), ("CPU_Mapped", "model", 280.0))
    assert not decode_uses_cpu(model(full_gpu, n_gpu_layers=-1)) and not decode_uses_cpu(None)
    assert decode_uses_cpu(model(full_gpu, n_gpu_layers=17))  # partial offload
    assert decode_uses_cpu(model(EMBEDDED_CPU, n_gpu_layers=-1))  # asked for the GPU, got none
    assert decode_uses_cpu(model(EMBEDDED_CPU, n_gpu_layers=0, offload=False))


def test_cpu_only_card_without_a_prediction():
    text = placement_card(model(EMBEDDED_CPU, n_gpu_layers=0, offload=False, n_layer=30), None, {}, 212 * MIB)
    assert "**CPU**: 31/31 layers — weights 92 MiB, KV 90 MiB, compute 98 MiB" in text
    assert "memory-mapped" in text and "worker RSS 212 MiB" in text
    assert "this llama.cpp build has no GPU offload" in text
    assert "no prediction yet" in text and "GPU0" not in text


def test_the_plans_cpu_fallback_warning_is_on_the_card():
    cpu_plan = replace(plan(gpu_gib=(0, 0, 0, 0), n_gpu_layers=0, fit="cpu_only"), warning="Runs on the CPU only: …")
    text = placement_card(model(EMBEDDED_CPU, n_gpu_layers=0, n_layer=30), cpu_plan, {})
    assert "\n\n⚠️ Runs on the CPU only: …\n\n| | predicted |" in text
    assert "⚠️" not in placement_card(model(), plan(), {})


def test_partial_offload_card_with_prediction_measurement_and_error():
    text = placement_card(model(), plan(), {0: 5400 * MIB}, 3 * GIB, last_tokens_per_s=27.0)
    for line in ("context 8,192 tokens · KV q8_0 · flash attention on",
                 "**GPU0**: 17/33 layers — weights 3.90 GiB, KV 512 MiB, compute 296 MiB",
                 "the driver says the worker holds 5.27 GiB (so CUDA context and runtime ≈ 600 MiB)",
                 "**CPU**: 16/33 layers — weights 1.95 GiB, KV 480 MiB, compute 16 MiB",
                 "| GPU layers | 17/33 | 17/33 | |",
                 "| GPU weights | 3.90 GiB | 3.90 GiB | +0.0 % |",
                 "| GPU KV | 512 MiB | 512 MiB | +0.0 % |",
                 "| GPU compute | 307 MiB | 296 MiB | -3.6 % |",
                 "| GPU runtime overhead | 614 MiB | 600 MiB | -2.4 % |",
                 "| GPU total | 5.30 GiB | 5.27 GiB | -0.5 % |",
                 "| CPU weights | 2.00 GiB | 1.95 GiB | -2.3 % |",
                 "| decode tokens/s | 30.0 | 27.0 (last reply) | -10.0 % |"):
        assert line in text, line
    assert "no prediction yet" not in text


def test_without_driver_figures_the_card_shows_buffers_only():
    text = placement_card(model(), plan(), {0: None})
    assert "driver says" not in text and "runtime overhead" not in text and "GPU total" not in text
    assert "| GPU weights |" in text


def test_two_gpus_and_silent_cpu_fallback():
    split = (("CUDA0", "model", 2048.0), ("CUDA1", "model", 2048.0), ("CUDA0", "KV", 256.0), ("CUDA1", "KV", 256.0))
    text = placement_card(model(split, n_gpu_layers=-1), None, {0: 3 * GIB, 1: None})
    assert "**GPUs**: 33/33 layers split over GPU0, GPU1" in text
    assert "**GPU0**: weights 2.00 GiB, KV 256 MiB" in text and "**GPU1**: weights 2.00 GiB" in text
    assert "**CPU**: 0/33 layers" in text
    fallback = placement_card(model(EMBEDDED_CPU, n_gpu_layers=-1), None, {})
    assert "33 layers were asked for on the GPU, but llama.cpp reported no GPU buffers" in fallback
    assert "No model loaded" in placement_card(None, None, {})
    assert "no buffer sizes" in placement_card(model(()), None, {})


def gpu0(total_gib=12, others=((9, "blender", 1.5),), worker_gib=None, processes=True) -> GpuSample:
    procs = tuple(VramProcess(pid, name, None if gib is None else int(gib * GIB)) for pid, name, gib in others)
    if worker_gib is not None:
        procs += (VramProcess(4242, "python", int(worker_gib * GIB), "worker"),)
    used = sum(p.used_bytes or 0 for p in procs)
    return GpuSample(0, "RTX 3060", used, total_gib * GIB, processes=procs if processes else None)


def test_others_that_leave_too_little_for_the_plan_are_named():
    [warning] = vram_warnings([gpu0(80, [(9, "blender", 12.0), (11, "ollama", 3.0)])],
                              plan(gpu_gib=(60, 8, 1, 0.6), fit="full_gpu", n_gpu_layers=33))
    assert "Other processes hold 15.00 GiB of GPU0: blender (pid 9, 12.00 GiB), ollama (pid 11, 3.00 GiB)" in warning
    assert "only 65.00 GiB is left, less than this placement needs (69.60 GiB)" in warning


def test_a_partial_offload_learns_how_many_layers_the_others_cost():
    [warning] = vram_warnings([gpu0(12, [(9, "blender", 1.5)])], plan(gpu_gib=(9, 0.5, 0.3, 0.2)))
    assert "Without them about 2 more layers would fit on the GPU" in warning  # 1.5 GiB / (10 GiB / 17)


def test_a_loaded_model_without_a_plan_uses_what_the_worker_holds():
    [warning] = vram_warnings([gpu0(12, [(9, "blender", 5.0)], worker_gib=8.0)], None, model(n_gpu_layers=-1))
    assert "less than this placement needs (8.00 GiB)" in warning
    assert vram_warnings([gpu0(12, [(9, "blender", 0.2)], worker_gib=8.0)], None, model(n_gpu_layers=-1)) == []
    # In a container the driver lists host pids: the worker is not found, so its memory is not "others'".
    assert vram_warnings([gpu0(12, [(31337, "", 8.0)])], None, model(n_gpu_layers=-1)) == []


def test_nothing_loaded_warns_only_about_a_sizeable_share():
    [warning] = vram_warnings([gpu0(12, [(9, "blender", 2.0)])])
    assert "A model loaded now gets only the 10.00 GiB left" in warning
    assert vram_warnings([gpu0(12, [(9, "blender", 0.1)])]) == []
    assert vram_warnings([gpu0(12, [(9, "blender", 2.0)], processes=False)]) == []  # unknown: no guessing
    assert vram_warnings([gpu0(12, [])]) == []


def test_process_names_cannot_inject_markdown_or_html():
    [warning] = vram_warnings([gpu0(12, [(9, "<img src=x onerror=alert(1)>**[x](y)", 2.0), (10, "", None)])])
    assert "<" not in warning and "[" not in warning and "*" not in warning.replace("⚠️", "")
    assert "unknown (pid 10, size not reported)" in warning
