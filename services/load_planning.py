"""Before a llama.cpp load: plan it for this machine right now (free VRAM and RAM as they are),
fill in ``auto`` choices, and refuse a load that cannot fit, before anything is allocated.
Before a transformers load: predict where it goes and how fast (the worker places it itself).
Either way, a model planned onto the CPU of a machine with a GPU carries a warning.
After a load has generated: learn this GPU's constant overhead from NVML (services.calibration)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from backends.base import LoadSpec, ModelInfo, ModelLoadError
from core.gguf_header import GGUFError
from core.hardware import Hardware
from core.hub_fit import plan_transformers
from core.multi_gpu_plan import split_choice, split_updates
from core.options import TransformersLoadOptions
from core.plan import Plan, cpu_fallback_warning
from core.planner import default_context, evaluate_as_asked, optimise
from services.calibration import load_calibration, record_gpu_overhead
from services.model_files import gguf_shape

MIB = 1 << 20


def gpu_process_bytes(pid: int) -> Optional[int]:
    """VRAM NVML attributes to ``pid`` on GPU 0, or None (no NVML, or the PID is not visible)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver or library: nothing to learn
        return None
    return None


class LoadPlanner:
    def __init__(self, data_dir: Path, probe: Callable[[], Hardware]) -> None:
        self._data_dir = data_dir
        self._probe = probe
        self._learned: set[int] = set()

    def prepare(self, spec: LoadSpec) -> tuple[LoadSpec, Optional[Plan]]:
        if spec.backend == "transformers":
            return spec, self._predict_transformers(spec)
        if spec.backend != "llama_cpp":
            return spec, None
        try:
            shape = gguf_shape(Path(spec.model_path))
        except GGUFError as exc:
            raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
        hw = self._probe()
        cal = load_calibration(self._data_dir, hw.gpus[0].name if hw.gpus else None)
        opts = spec.options
        try:
            if opts.n_gpu_layers is None:
                plan = optimise(shape, hw, n_ctx=opts.n_ctx, flash_attn=opts.flash_attn, n_ubatch=opts.n_batch,
                                cal=cal, kv_types=(opts.kv_type,), kv_placements=opts.kv_placements,
                                gpu_split=split_choice(opts))
            else:
                plan = evaluate_as_asked(shape, hw, opts.n_gpu_layers, default_context(shape, opts.n_ctx), opts.kv_type,
                                         opts.flash_attn, opts.n_batch, cal, gpu_split=split_choice(opts),
                                         kv_placement="ram" if opts.kv_placement == "ram" else "gpu")
        except ValueError as exc:  # a split that does not match this machine's GPUs
            raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
        if plan.fit == "no_fit":
            raise ModelLoadError(f"{Path(spec.model_path).name} will not fit on this machine as asked: "
                                 + "; ".join(plan.reasons) + ". Try a smaller context, a q8_0/q4_0 KV cache, "
                                 "fewer GPU layers, or a smaller quantisation.")
        options = opts.model_copy(update={"n_gpu_layers": plan.n_gpu_layers, "n_ctx": plan.n_ctx,
                                          "kv_placement": plan.kv_placement, **split_updates(plan)})
        if opts.n_gpu_layers is None:  # 0 layers asked for is a choice, not something to warn about
            plan = replace(plan, warning=cpu_fallback_warning(plan, hw))
        return replace(spec, options=options, hide_gpus=bool(plan.extra.get("hide_gpus"))), plan

    def _predict_transformers(self, spec: LoadSpec) -> Optional[Plan]:
        """The Models tab's estimate for this folder on this machine now. Only a prediction: the
        worker plans the real placement (and refuses what cannot fit) with torch's view of the GPU."""
        from services.hf_repo import RepoError, inspect_repo

        opts: TransformersLoadOptions = spec.options  # LoadSpec enforces the backend's options type
        try:
            repo = inspect_repo(spec.model_path)
        except RepoError:
            return None  # the worker's own checks say what is wrong
        hw = self._probe()
        cal = load_calibration(self._data_dir, hw.gpus[0].name if hw.gpus else None)
        plan = plan_transformers(repo.dims, repo.tensors, hw, opts.quantization, opts.n_ctx, cal)
        if plan.fit == "no_fit":
            return None
        chosen_cpu = opts.gpu_memory_gib == 0
        return plan if chosen_cpu else replace(plan, warning=cpu_fallback_warning(plan, hw))

    def learn(self, info: ModelInfo) -> Optional[int]:
        """Call after the first reply of a load: record measured VRAM minus llama.cpp's buffers."""
        if info.worker_pid is None or info.worker_pid in self._learned:
            return None
        self._learned.add(info.worker_pid)
        cuda = sum(b.mib for b in info.buffers if b.device.startswith("CUDA") and not b.device.endswith("_Host"))
        if not cuda:
            return None
        used = gpu_process_bytes(info.worker_pid)
        hw = self._probe()
        if used is None or not hw.gpus:
            return None
        return record_gpu_overhead(self._data_dir, hw.gpus[0].name, used, int(cuda * MIB))


def cached_probe(probe: Callable[[], Hardware], ttl_s: float = 5.0) -> Callable[[], Hardware]:
    """Free VRAM changes; re-probe when the last reading is older than ``ttl_s``."""
    state: dict = {}

    def get() -> Hardware:
        now = time.monotonic()
        if "hw" not in state or now - state["at"] > ttl_s:
            state["hw"], state["at"] = probe(), now
        return state["hw"]

    return get
