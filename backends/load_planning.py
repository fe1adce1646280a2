"""Before a load: plan it for this machine right now (free VRAM and RAM as they are) through the one
door (``core.load_plan``), fill in the automatic choices with the plan's, and refuse a llama.cpp load
that cannot fit before anything is allocated. A transformers load gets a prediction (the worker
places it itself). A model planned onto the CPU of a machine with a GPU carries a warning.
After a load has generated: learn this GPU's constant overhead from NVML (services.calibration).

The planning object (machine, calibration, model facts) is the one the screens use
(``services.planning.Planning``), so what a screen showed is what the load plans."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Union

from backends.base import LoadSpec, ModelInfo, ModelLoadError
from core.hardware import Hardware
from core.load_plan import applied_options
from core.plan import Plan, cpu_fallback_warning
from services.calibration import record_gpu_overhead
from services.planning import Planning, cached_probe  # noqa: F401  (cached_probe: for the benches)

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
    def __init__(self, planning: Union[Planning, Path], probe: Optional[Callable[[], Hardware]] = None) -> None:
        """``LoadPlanner(planning)`` shares the app's planning object; ``LoadPlanner(data_dir, probe)``
        makes its own (benchmarks and tests)."""
        self.planning = planning if isinstance(planning, Planning) else Planning(Path(planning), probe, ttl_s=0)
        self._learned: set[int] = set()

    def prepare(self, spec: LoadSpec) -> tuple[LoadSpec, Optional[Plan]]:
        """The spec to execute (every automatic choice replaced by the plan's) and its plan. Checks
        the file(s) too: ModelLoadError with a plain message for anything unreadable."""
        if spec.backend not in ("llama_cpp", "transformers"):
            return spec, None
        try:
            facts = self.planning.facts(spec.model_path, spec.backend)
        except (ValueError, OSError) as exc:  # GGUFError, RepoError
            raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
        hw = self.planning.machine()
        try:
            plan = self.planning.plan(facts, spec.options, hw=hw)
        except ValueError as exc:  # e.g. a split that does not match this machine's GPUs
            raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
        if spec.backend == "transformers":
            # Only a prediction: the worker plans the real placement (and refuses what cannot fit)
            # with torch's view of the GPU.
            if plan.fit == "no_fit":
                return spec, None
            chosen_cpu = spec.options.gpu_memory_gib == 0
            return spec, (plan if chosen_cpu else replace(plan, warning=cpu_fallback_warning(plan, hw)))
        if plan.fit == "no_fit":
            raise ModelLoadError(f"{Path(spec.model_path).name} will not fit on this machine as asked: "
                                 + "; ".join(plan.reasons) + ". Try a smaller context, a q8_0/q4_0 KV cache, "
                                 "fewer GPU layers, or a smaller quantisation.")
        if spec.options.n_gpu_layers is None:  # 0 layers asked for is a choice, not something to warn about
            plan = replace(plan, warning=cpu_fallback_warning(plan, hw))
        options = applied_options(plan, spec.options)  # the slots too: planned by the one door
        return replace(spec, options=options, hide_gpus=bool(plan.extra.get("hide_gpus"))), plan

    def chat_template(self, spec: LoadSpec) -> object:
        """The raw chat template of the model ``prepare`` just read (None: none or not known)."""
        if spec.backend == "transformers":
            from services.template_process import transformers_template_text

            return transformers_template_text(spec.model_path)
        if spec.backend != "llama_cpp":
            return None
        return self.planning.facts(spec.model_path, spec.backend).chat_template

    def learn(self, info: ModelInfo) -> Optional[int]:
        """Call after the first reply of a load: record measured VRAM minus llama.cpp's buffers."""
        if info.worker_pid is None or info.worker_pid in self._learned:
            return None
        self._learned.add(info.worker_pid)
        # GPU 0's buffers only: NVML's figure below is GPU 0's (with several GPUs the others' buffers
        # would make the overhead look negative or wrong)
        cuda = sum(b.mib for b in info.buffers if b.device == "CUDA0")
        if not cuda:
            return None
        used = gpu_process_bytes(info.worker_pid)
        hw = self.planning.machine()
        if used is None or not hw.gpus:
            return None
        return record_gpu_overhead(self.planning.data_dir, hw.gpus[0].name, used, int(cuda * MIB))

