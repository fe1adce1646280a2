"""A machine with a GPU whose model was planned onto the CPU only is told so, with the speed to
expect and what to do: before the load (the plan) and after it (the chat's status line). On a GPU
too full even for llama.cpp's CUDA buffers, the worker runs with the GPU hidden."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from backends.base import LoadSpec, ModelLoadError
from backends.manager import ModelManager
from backends.worker_client import WorkerBackend
from core.hardware import GIB, GpuInfo, GpuProcess, Hardware
from core.options import LoadOptions, SamplingOptions, TransformersLoadOptions
from core.plan import MemoryBreakdown, Plan, cpu_fallback_warning
from core.settings import AppSettings
from backends.load_planning import LoadPlanner
from services.local_models import build_catalog
from ui import chat_handlers as h
from ui.context import AppContext


def machine(free_gib: float | None, offload: bool = True, processes=()) -> Hardware:
    gpus = () if free_gib is None else (
        GpuInfo(0, "RTX 3060", 12 * GIB, int(free_gib * GIB), used_bytes=int((12 - free_gib) * GIB),
                bandwidth_bytes_per_s=360e9, processes=tuple(processes)),)
    return Hardware(gpus=gpus, ram_total_bytes=64 * GIB, ram_available_bytes=60 * GIB, cpu_physical_cores=2,
                    ram_bandwidth_bytes_per_s=40e9, llama_gpu_offload=offload)


def plan(fit: str, backend: str = "llama_cpp", tokens_per_s: float = 3.2) -> Plan:
    return Plan(fit=fit, backend=backend, n_layer=32, n_gpu_layers=0 if fit == "cpu_only" else 33, n_ctx=4096,
                kv_type="f16", flash_attn=True, gpu=MemoryBreakdown(), cpu=MemoryBreakdown(4 * GIB),
                tokens_per_s=tokens_per_s)


GAME = GpuProcess(4242, "game*_[x](y)", int(11.5 * GIB))


@pytest.mark.parametrize("the_plan, hw, expected", [
    (plan("full_gpu"), machine(11.5), ""),
    (plan("partial"), machine(3.0), ""),
    (plan("cpu_only"), machine(None), ""),  # no GPU: the CPU is the only choice, nothing to warn of
    (plan("cpu_only"), machine(0.3, processes=[GAME]),
     "Runs on the CPU only: RTX 3060 has 0.3 of 12.0 GiB free, most of it held by gamexy (pid 4242, 11.5 GiB), "
     "too little for any layer; expect about 3.2 tokens/s. Free GPU memory"),
    (plan("cpu_only", tokens_per_s=0.0), machine(0.3), "Runs on the CPU only: RTX 3060 has 0.3 of 12.0 GiB free, "
     "too little for any layer; expect it to be much slower than on the GPU."),
    (plan("cpu_only"), machine(11.5, offload=False),
     "Runs on the CPU only: the installed llama.cpp has no GPU offload, so RTX 3060 stays unused; expect about "
     "3.2 tokens/s. Run the setup again where `nvcc` is installed"),
    # torch, not llama.cpp, runs a transformers model: llama.cpp's build says nothing about it.
    (plan("cpu_only", backend="transformers", tokens_per_s=0.05), machine(0.2, offload=False),
     "Runs on the CPU only: RTX 3060 has 0.2 of 12.0 GiB free, too little for any layer; expect about 0.05 tokens/s."),
])
def test_the_warning_says_why_how_slow_and_what_to_do(the_plan, hw, expected):
    warning = cpu_fallback_warning(the_plan, hw)
    assert warning.startswith(expected) if expected else warning == ""


@pytest.mark.real_model
def test_an_auto_llama_load_with_a_cpu_only_build_on_a_gpu_machine_carries_the_warning(embedded_model, tmp_path):
    planner = LoadPlanner(tmp_path, lambda: machine(11.5, offload=False))
    spec, auto = planner.prepare(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048)))
    assert auto.fit == "cpu_only" and spec.options.n_gpu_layers == 0
    assert auto.warning.startswith("Runs on the CPU only: the installed llama.cpp has no GPU offload, so RTX 3060 "
                                   "stays unused") and f"about {auto.tokens_per_s:.2g} tokens/s" in auto.warning
    # Asking for 0 layers is the user's choice: no warning. A build that offloads: none either.
    _, chosen = planner.prepare(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048, n_gpu_layers=0)))
    assert chosen.fit == "cpu_only" and chosen.warning == ""
    _, roomy = LoadPlanner(tmp_path, lambda: machine(11.5)).prepare(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048)))
    assert roomy.fit == "full_gpu" and roomy.warning == ""


@pytest.mark.real_model
def test_on_a_full_gpu_a_cuda_build_runs_with_the_gpu_hidden_and_says_so(embedded_model, tmp_path):
    # Even 0 layers keep a CUDA context and compute buffers on the GPU: 10 MiB free is too little.
    planner = LoadPlanner(tmp_path, lambda: machine(0.01, processes=[GAME]))
    spec, auto = planner.prepare(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048)))
    assert auto.fit == "cpu_only" and auto.gpu.total == 0 and spec.hide_gpus and spec.options.n_gpu_layers == 0
    assert "hidden from the model's worker" in auto.reasons[-1]
    assert auto.warning.startswith("Runs on the CPU only: RTX 3060 has 0.0 of 12.0 GiB free, most of it held by "
                                   "gamexy (pid 4242, 11.5 GiB), too little even for llama.cpp's CUDA buffers, "
                                   "so the GPU is hidden from the model's worker; expect about")
    chosen_spec, chosen = planner.prepare(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048, n_gpu_layers=0)))
    assert chosen_spec.hide_gpus and chosen.fit == "cpu_only" and chosen.warning == ""
    # One layer asked for cannot be had with the GPU hidden: refused, with the reason.
    with pytest.raises(ModelLoadError, match="will not fit.*on the GPU"):
        planner.prepare(LoadSpec(str(embedded_model), LoadOptions(n_ctx=2048, n_gpu_layers=1)))
    # With room for the CUDA buffers the GPU stays visible.
    spec, roomy = LoadPlanner(tmp_path, lambda: machine(11.5)).prepare(LoadSpec(str(embedded_model), LoadOptions()))
    assert not spec.hide_gpus and "hide_gpus" not in roomy.extra


def worker_environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(e.split("=", 1) for e in entries if "=" in e)


@pytest.mark.real_model
def test_a_hidden_gpu_load_starts_its_worker_with_no_cuda_device_visible(embedded_model):
    backend = WorkerBackend()
    try:
        info = backend.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=512, n_gpu_layers=0), hide_gpus=True))
        assert worker_environ(info.worker_pid)["CUDA_VISIBLE_DEVICES"] == ""
        reply = "".join(backend.stream_chat([{"role": "user", "content": "Hi"}],
                                            SamplingOptions(max_tokens=4, temperature=0.0), threading.Event()))
        assert reply
        backend.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=512)))  # the next load sees the GPU again
        assert worker_environ(backend.info.worker_pid).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    finally:
        backend.unload()


def test_a_transformers_load_gets_a_prediction_and_the_warning_on_a_full_gpu(hf_checkpoint, tmp_path):
    spec = LoadSpec(str(hf_checkpoint), TransformersLoadOptions(quantization="bf16"), backend="transformers")
    same, full = LoadPlanner(tmp_path, lambda: machine(0.0)).prepare(spec)
    assert same == spec  # the worker places the model itself: the spec is not changed
    assert full.backend == "transformers" and full.fit == "cpu_only" and full.tokens_per_s > 0
    assert full.warning.startswith("Runs on the CPU only: RTX 3060 has 0.0 of 12.0 GiB free")
    _, roomy = LoadPlanner(tmp_path, lambda: machine(11.5)).prepare(spec)
    assert roomy.fit == "full_gpu" and roomy.warning == "" and roomy.gpu.weights > 0
    chosen = LoadSpec(str(hf_checkpoint), TransformersLoadOptions(quantization="bf16", gpu_memory_gib=0),
                      backend="transformers")
    assert LoadPlanner(tmp_path, lambda: machine(0.0)).prepare(chosen)[1].warning == ""
    # A folder that is no model is refused before any worker starts, with what is wrong.
    broken = LoadSpec(str(tmp_path), TransformersLoadOptions(), backend="transformers")
    with pytest.raises(ModelLoadError, match="no config.json"):
        LoadPlanner(tmp_path, lambda: machine(0.0)).prepare(broken)


@pytest.mark.real_model
def test_the_chat_status_line_carries_the_warning_after_the_load(embedded_model, tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(h.gr, "Warning", warnings.append)
    settings = AppSettings(data_dir=tmp_path)
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "small.gguf").write_bytes(embedded_model.read_bytes())
    manager = ModelManager(planner=LoadPlanner(tmp_path, lambda: machine(11.5, offload=False)))
    ctx = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir))
    try:
        status = h.load_model(ctx, "small.gguf", (1024, None, "f16", True, None, 512, *[None] * (len(h.LOAD_FIELDS) - 6)))
    finally:
        manager.close()
    assert status.startswith("**Ready**") and "\n\n⚠️ Runs on the CPU only: the installed llama.cpp has no GPU offload" in status
    assert warnings and warnings[0].startswith("Runs on the CPU only")
