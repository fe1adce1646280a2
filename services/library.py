"""The local library as the Models tab shows it: each model on disk with its format, quantisation,
size, when it was last used and its plan on this machine; delete (inside the models folder only).
Reads files only: it works with HF_HUB_OFFLINE=1 and with no network at all."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from core.hardware import Hardware
from core.hub_fit import FitRow, best_row, transformers_rows
from core.load_plan import HfFacts, ModelFacts, plan_with_best_context
from core.model_catalog import ModelCatalog, ModelEntry
from core.plan import Plan
from core.planner import Calibration
from services.downloads import MANIFEST, inside, read_manifest, write_manifest
from services.hf_repo import inspect_repo
from services.model_files import gguf_shape, shard_paths

USAGE_FILE = "library-usage.json"


@dataclass(frozen=True)
class LibraryItem:
    entry: ModelEntry
    quant: str = ""
    plan: Optional[Plan] = None
    best_ctx: int = 0
    problem: str = ""
    last_used: str = ""          # "2026-01-02 03:04", "" when never
    repo: str = ""               # the Hub repo it was downloaded from (its manifest), "" otherwise


def _read_facts(path: str, backend: str) -> ModelFacts:
    if backend == "transformers":
        repo = inspect_repo(path)
        return ModelFacts("transformers", Path(path).name,
                          hf=HfFacts(repo.dims, repo.tensors, repo.quant_method, repo.weight_bytes, len(repo.weight_files)))
    return ModelFacts("llama_cpp", Path(path).name, shape=gguf_shape(Path(path)))


def plan_local(entry: ModelEntry, hw: Optional[Hardware], cal: Calibration = Calibration(),
               read_facts: Optional[Callable[[str, str], ModelFacts]] = None) -> FitRow:
    """The plan of a model on disk, from its own header (GGUF) or config and safetensors headers,
    through the one door. ``read_facts`` is the app's cached reader (``services.planning``)."""
    try:
        facts = (read_facts or _read_facts)(entry.path, entry.backend)
    except (ValueError, OSError) as exc:  # GGUFError, RepoError
        what = "" if entry.backend == "transformers" else "cannot read the header: "
        return FitRow(entry.name, entry.name, "", entry.size_bytes, problem=f"{what}{exc}")
    if facts.backend == "transformers":
        hf = facts.hf
        if hw is None:
            return FitRow(entry.name, entry.name, hf.quant_method or "safetensors", entry.size_bytes,
                          problem="hardware probing is not available")
        rows = transformers_rows(hf.dims, hf.tensors, hf.quant_method, hf.weight_bytes, hf.n_files, hw, cal=cal)
        best = best_row(rows)
        return next((r for r in rows if r.key == best), rows[-1])
    shape = facts.shape
    if hw is None:
        return FitRow(entry.name, entry.name, shape.quantization, entry.size_bytes,
                      problem="hardware probing is not available")
    plan, best_ctx = plan_with_best_context(facts, hw, cal)
    return FitRow(entry.name, entry.name, shape.quantization, entry.size_bytes, plan=plan, best_ctx=best_ctx)


def library_items(catalog: ModelCatalog, hw: Optional[Hardware], usage: dict[str, float],
                  cal: Calibration = Calibration(),
                  read_facts: Optional[Callable[[str, str], ModelFacts]] = None) -> list[LibraryItem]:
    items = []
    for entry in catalog.entries:
        row = plan_local(entry, hw, cal, read_facts)
        used = usage.get(entry.path)
        folder = Path(entry.path) if entry.backend == "transformers" else Path(entry.path).parent
        repo = read_manifest(folder).get("repo", "") if entry.source == "library" else ""
        items.append(LibraryItem(entry, row.quant if row.plan is None else (row.plan.quantization or row.quant),
                                 row.plan, row.best_ctx, row.problem,
                                 time.strftime("%Y-%m-%d %H:%M", time.localtime(used)) if used else "",
                                 repo if isinstance(repo, str) else ""))
    return items


def read_usage(data_dir: Path) -> dict[str, float]:
    try:
        data = json.loads((data_dir / USAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float))}


def record_use(data_dir: Path, path: str, when: Optional[float] = None) -> None:
    usage = read_usage(data_dir)
    usage[path] = time.time() if when is None else when
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f"{USAGE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(usage), encoding="utf-8")
    os.replace(tmp, data_dir / USAGE_FILE)


class DeleteError(Exception):
    pass


def delete_model(models_dir: Path, entry: ModelEntry, loaded_path: Optional[str]) -> str:
    """Delete a library model (every shard of a split GGUF, or a transformers folder); refuses the
    embedded and command-line models, a loaded model, and anything not inside the models folder."""
    if entry.source != "library":
        raise DeleteError(f"{entry.name} is not in the models folder; FitChat deletes only models it lists there.")
    path = Path(entry.path)
    if loaded_path and Path(loaded_path) in ({path} | set(shard_paths(path) if path.suffix == ".gguf" else ())):
        raise DeleteError(f"{entry.name} is loaded: unload it first.")
    if path.is_symlink() or not inside(models_dir, path):
        raise DeleteError(f"{entry.name} is not inside the models folder; not deleting.")
    if entry.backend == "transformers":
        if path.resolve().parent != models_dir.resolve():
            raise DeleteError(f"{entry.name} is not a model folder of the library; not deleting.")
        shutil.rmtree(path)
        return f"Deleted {entry.name} (the whole folder)."
    removed = [p for p in shard_paths(path) if p.is_file() and not p.is_symlink() and inside(models_dir, p)]
    for p in removed:
        p.unlink()
    folder = path.parent
    manifest = read_manifest(folder)
    if isinstance(manifest.get("files"), dict) and folder.resolve() != models_dir.resolve():
        for p in removed:
            manifest["files"].pop(p.name, None)
        if manifest["files"]:
            write_manifest(folder, manifest)
        else:
            (folder / MANIFEST).unlink(missing_ok=True)
    if folder.resolve() != models_dir.resolve() and not any(folder.iterdir()):
        folder.rmdir()
    return f"Deleted {entry.name} ({len(removed)} file{'s' if len(removed) != 1 else ''})."
