"""The one planning object of the app: this machine (probed, cached a few seconds), its calibration
(learnt from real loads) and the facts of model files (each file inspected once, until it changes).
The model manager and every screen share one instance (``cli.launch.make_context``), so no screen
can plan without the calibration, and a Load plans from the header the screen already read."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

from core.hardware import Hardware
from core.load_plan import AnyOptions, HfFacts, ModelFacts, plan_load
from core.plan import Plan
from core.planner import Calibration, Goal
from services.calibration import load_calibration
from core.model_shape import shape_from_headers
from services.gguf_file import read_header
from services.model_files import shard_paths

MAX_CACHED_FACTS = 64


def cached_probe(probe: Callable[[], Hardware], ttl_s: float = 5.0) -> Callable[[], Hardware]:
    """Free VRAM changes; re-probe when the last reading is older than ``ttl_s``."""
    state: dict = {}
    lock = threading.Lock()

    def get() -> Hardware:
        with lock:
            now = time.monotonic()
            if "hw" not in state or now - state["at"] > ttl_s:
                state["hw"], state["at"] = probe(), now
            return state["hw"]

    return get


def _stamp(path: Path, backend: str) -> tuple:
    """What identifies a file's content cheaply: size and modification time of every part."""
    if backend == "transformers":
        parts = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors")) if path.is_dir() else []
    else:
        parts = shard_paths(path)
    stamps = []
    for p in parts:
        try:
            st = p.stat()
            stamps.append((p.name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stamps.append((p.name, None))
    return tuple(stamps)


class Planning:
    def __init__(self, data_dir: Path, probe: Callable[[], Hardware], ttl_s: float = 5.0) -> None:
        self.data_dir = data_dir
        self._machine = cached_probe(probe, ttl_s) if ttl_s > 0 else probe
        self._facts: OrderedDict[tuple, ModelFacts] = OrderedDict()
        self._lock = threading.Lock()
        self.inspections = 0  # files read so far (the "inspected once per action" tests count them)

    def machine(self) -> Hardware:
        return self._machine()

    def calibration(self, hw: Optional[Hardware] = None) -> Calibration:
        """This machine's calibration (for a described machine, the one of its GPU model if learnt)."""
        hw = hw if hw is not None else self.machine()
        return load_calibration(self.data_dir, hw.gpus[0].name if hw.gpus else None)

    def facts(self, path: str | Path, backend: str = "llama_cpp") -> ModelFacts:
        """The facts of the model at ``path``; GGUFError / RepoError (ValueError) or OSError when
        it cannot be read. Read once and kept while the file(s) stay unchanged."""
        path = Path(path)
        key = (str(path), backend, _stamp(path, backend))
        with self._lock:
            if key in self._facts:
                self._facts.move_to_end(key)
                return self._facts[key]
        facts = self._read(path, backend)
        with self._lock:
            self.inspections += 1
            self._facts[key] = facts
            while len(self._facts) > MAX_CACHED_FACTS:
                self._facts.popitem(last=False)
        return facts

    @staticmethod
    def _read(path: Path, backend: str) -> ModelFacts:
        if backend == "transformers":
            from services.hf_repo import inspect_repo

            repo = inspect_repo(path)
            return ModelFacts("transformers", path.name, hf=HfFacts(repo.dims, repo.tensors, repo.quant_method,
                                                                    repo.weight_bytes, len(repo.weight_files)))
        headers = [read_header(p) for p in shard_paths(path)]
        shape = shape_from_headers(headers, name=path.name, file_bytes=sum(h.file_size or 0 for h in headers))
        template = headers[0].metadata.get("tokenizer.chat_template")
        return ModelFacts("llama_cpp", path.name, shape=shape, chat_template=template if isinstance(template, str) else None)

    def plan(self, facts: ModelFacts, options: Optional[AnyOptions] = None, goal: Goal = "fastest",
             hw: Optional[Hardware] = None) -> Plan:
        """``core.load_plan.plan_load`` on this machine (or ``hw``) with its calibration."""
        hw = hw if hw is not None else self.machine()
        return plan_load(facts, hw, self.calibration(hw), options, goal)
