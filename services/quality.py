"""The quality check as the app and the CLI run it: the shipped text, a run on the model manager
(with an optional reference model first), and the results kept per model file.

Results are kept in ``<data>/quality/results.json`` keyed by the model file (path, size, mtime),
each with the text's sha256 and the settings; only complete runs are kept as results. A
reference's top-k distributions are kept beside them (``refs/<key>.npz``) so that comparing
several quantisations against one reference runs the reference once.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from core.quality import QualityOptions, QualityResult, WindowScore, summarise
from services.paths import project_root

if TYPE_CHECKING:  # a type name only: services import no backend at run time
    from backends.base import LoadSpec

TEXT_NAME = "gpl-3.0.txt"
RESULTS_FILE = "results.json"
MAX_RESULTS_PER_MODEL = 20

Progress = Callable[[str, int, int], None]   # (phase, windows done, windows total)


def quality_text_path() -> Path:
    return project_root() / "assets" / "quality" / TEXT_NAME


def read_quality_text() -> tuple[str, str]:
    """The shipped text and its sha256."""
    raw = quality_text_path().read_bytes()
    return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


def model_key(model_path: str) -> str:
    """A model file (or transformers folder) by path, size and modification time."""
    path = Path(model_path)
    try:
        st = path.stat()
        size = st.st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return f"{path.resolve()}|{size}|{int(st.st_mtime)}"
    except OSError:
        return str(path)


class QualityStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "quality"
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads((self.root / RESULTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, model_path: str, result: QualityResult) -> None:
        if not result.complete:
            raise ValueError("only complete runs are kept as results")
        with self._lock:
            data = self._read()
            key = model_key(model_path)
            kept = [r for r in data.get(key, []) if isinstance(r, dict)
                    and not (r.get("text_sha256") == result.text_sha256 and r.get("options") == result.options
                             and r.get("reference", "") == result.reference)]
            data[key] = (kept + [result.to_dict()])[-MAX_RESULTS_PER_MODEL:]
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{RESULTS_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.root / RESULTS_FILE)

    def results(self, model_path: str) -> list[QualityResult]:
        out = []
        for item in self._read().get(model_key(model_path), []):
            try:
                out.append(QualityResult.from_dict(item))
            except (TypeError, ValueError):
                continue  # a result written by another version
        return out

    def latest(self, model_path: str, text_sha256: Optional[str] = None) -> Optional[QualityResult]:
        """The latest result on the shipped text (a comparison against a reference preferred)."""
        sha = text_sha256 or read_quality_text()[1]
        found = [r for r in self.results(model_path) if r.text_sha256 == sha]
        with_ref = [r for r in found if r.reference]
        return (with_ref or found or [None])[-1]

    # -- reference distributions ---------------------------------------------------------------
    def _ref_file(self, ref_path: str, sha: str, opts: QualityOptions) -> Path:
        key = hashlib.sha256(f"{model_key(ref_path)}|{sha}|{json.dumps(opts.model_dump(), sort_keys=True)}"
                             .encode()).hexdigest()[:32]
        return self.root / "refs" / f"{key}.npz"

    def load_reference(self, ref_path: str, sha: str, opts: QualityOptions) -> Optional[dict]:
        import numpy as np

        path = self._ref_file(ref_path, sha, opts)
        try:
            with np.load(path, allow_pickle=False) as data:
                n = int(data["n_windows"])
                return {"name": str(data["name"]), "vocab": (int(data["n_vocab"]), str(data["tokens_sha"])),
                        "windows": [(data[f"ids{i}"], data[f"lps{i}"]) for i in range(n)],
                        "ppl": float(data["ppl"])}
        except (OSError, KeyError, ValueError):
            return None

    def save_reference(self, ref_path: str, sha: str, opts: QualityOptions, ref: dict, ppl: float) -> None:
        import numpy as np

        path = self._ref_file(ref_path, sha, opts)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"ids{i}": ids for i, (ids, _) in enumerate(ref["windows"])}
        arrays.update({f"lps{i}": lps for i, (_, lps) in enumerate(ref["windows"])})
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, name=ref["name"], n_vocab=ref["vocab"][0], tokens_sha=ref["vocab"][1],
                 n_windows=len(ref["windows"]), ppl=ppl, **arrays)
        os.replace(tmp, path)


@dataclass
class QualityRun:
    """One run's outcome: the result (possibly partial: ``complete`` False) and whether it was kept."""
    result: QualityResult
    reference: Optional[QualityResult] = None
    stored: bool = False


def _score(manager, spec: LoadSpec, text: str, sha: str, opts: QualityOptions, cancel: threading.Event,
           progress: Optional[Progress], phase: str, ref: Optional[dict] = None,
           keep_top: bool = False) -> tuple[QualityResult, Optional[dict]]:
    started = time.monotonic()
    windows: list[WindowScore] = []
    tops: list[tuple] = []
    n_tokens = total = 0
    vocab = None
    ref_msg = {k: ref[k] for k in ("name", "vocab", "windows")} if ref else None
    events = manager.score_text(text, opts, cancel, ref_msg, keep_top)
    complete = False
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                complete = bool(stop.value)
                break
            if event[0] == "start":
                _, n_tokens, total, vocab = event
            else:
                windows.append(WindowScore(**event[1]))
                if keep_top:
                    tops.append((event[2], event[3]))
            if progress:
                progress(phase, len(windows), total)
    finally:
        events.close()
    result = summarise(windows, model=Path(spec.model_path).name, text_sha256=sha, opts=opts, n_tokens=n_tokens,
                       windows_total=total, seconds=time.monotonic() - started,
                       reference=ref["name"] if ref else "", reference_ppl=ref.get("ppl") if ref else None,
                       backend=spec.backend, measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    if not complete:
        result = QualityResult.from_dict({**result.to_dict(), "complete": False})
    own = {"name": result.model, "vocab": tuple(vocab) if vocab else (0, ""), "windows": tops,
           "ppl": result.ppl} if keep_top and result.complete else None
    return result, own


def run_quality(manager, spec: LoadSpec, store: QualityStore, opts: QualityOptions = QualityOptions(),
                cancel: Optional[threading.Event] = None, ref_spec: Optional[LoadSpec] = None,
                progress: Optional[Progress] = None) -> QualityRun:
    """Measure ``spec``'s model (loaded first if another one is), against ``ref_spec`` when given
    (its distributions from the store, or measured first: the reference is loaded for that, then
    the model again). A stopped run returns what was measured and keeps nothing."""
    cancel = cancel or threading.Event()
    text, sha = read_quality_text()
    ref = ref_result = None
    if ref_spec is not None:
        ref = store.load_reference(ref_spec.model_path, sha, opts)
        if ref is None:
            _ensure_loaded(manager, ref_spec, progress, "loading the reference")
            ref_result, ref = _score(manager, ref_spec, text, sha, opts, cancel, progress, "reference",
                                     keep_top=True)
            if not ref_result.complete:
                return QualityRun(ref_result)
            store.save_reference(ref_spec.model_path, sha, opts, ref, ref_result.ppl)
            store.save(ref_spec.model_path, ref_result)
    _ensure_loaded(manager, spec, progress, "loading the model")
    result, _ = _score(manager, spec, text, sha, opts, cancel, progress, "model", ref)
    stored = False
    if result.complete:
        store.save(spec.model_path, result)
        stored = True
    return QualityRun(result, ref_result, stored)


def _ensure_loaded(manager, spec: LoadSpec, progress: Optional[Progress], phase: str) -> None:
    state = manager.state()
    if state.status == "ready" and state.spec is not None and state.spec.model_path == spec.model_path:
        return
    if progress:
        progress(phase, 0, 0)
    manager.load(spec, busy_timeout_s=600)


class QualityJob:
    """A quality run in its own thread (the UI polls it): the latest progress, a Stop switch, and the
    outcome or the error message when it ends."""

    def __init__(self, manager, spec: LoadSpec, store: QualityStore, opts: QualityOptions,
                 ref_spec: Optional[LoadSpec] = None) -> None:
        self.cancel = threading.Event()
        self.progress: tuple[str, int, int] = ("starting", 0, 0)
        self.outcome: Optional[QualityRun] = None
        self.error = ""
        self.done = threading.Event()
        self._args = (manager, spec, store, opts, self.cancel, ref_spec, self._on_progress)
        self._thread = threading.Thread(target=self._run, name="quality-check", daemon=True)

    def start(self) -> "QualityJob":
        self._thread.start()
        return self

    def _on_progress(self, phase: str, done: int, total: int) -> None:
        self.progress = (phase, done, total)

    def _run(self) -> None:
        try:
            self.outcome = run_quality(*self._args)
        except Exception as exc:  # a bug must not leave the UI waiting forever
            self.error = str(exc) if _is_backend_error(exc) else (
                f"The quality check stopped unexpectedly: {type(exc).__name__}: {exc}")
        finally:
            self.done.set()


def quality_labels(store: QualityStore, paths: list[str]) -> dict[str, str]:
    """``short_summary`` of the latest result on the shipped text for each model path that has one."""
    from core.quality import short_summary

    sha = read_quality_text()[1]
    out = {}
    for path in paths:
        result = store.latest(path, sha)
        if result is not None:
            out[path] = short_summary(result)
    return out


def _is_backend_error(exc: BaseException) -> bool:
    """A ``backends.base.BackendError`` (its message is meant for the user), recognised without
    importing the backends layer from here (imports go down only)."""
    return any(c.__name__ == "BackendError" and c.__module__ == "backends.base" for c in type(exc).__mro__)
