"""Build the model catalog from the embedded model, a --model path and the models folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.model_catalog import ModelCatalog, ModelEntry
from core.model_shape import split_info
from services.paths import EMBEDDED_NAME, embedded_model_path

INDEX_FILE = "model.safetensors.index.json"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _usable(candidate: Path, root: Path) -> bool:
    """Not a symlink, not hidden (``.partial`` downloads), and inside ``root`` once resolved."""
    if candidate.is_symlink() or candidate.parent.is_symlink():
        return False
    if any(part.startswith(".") for part in candidate.relative_to(root).parts):
        return False
    return candidate.resolve().is_relative_to(root)


def _gguf_entry(path: Path, root: Path) -> Optional[ModelEntry]:
    """One entry per model: a split GGUF is listed by its first shard, with the size of all shards."""
    info = split_info(path.name)
    if info is not None and info[1] != 1:
        return None
    size = _size(path)
    if info is not None:
        stem, _, count = info
        size = sum(_size(path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf")) for i in range(1, count + 1))
    resolved = path.resolve()
    return ModelEntry(str(resolved.relative_to(root)), str(resolved), "library", size)


def _transformers_entry(folder: Path, root: Path) -> Optional[ModelEntry]:
    """A folder one level down with config.json and safetensors weights (checked in full at load)."""
    weights = [p for p in folder.glob("*.safetensors") if p.is_file() and not p.is_symlink()]
    if not (folder / "config.json").is_file() or not (weights or (folder / INDEX_FILE).is_file()):
        return None
    resolved = folder.resolve()
    return ModelEntry(str(resolved.relative_to(root)), str(resolved), "library", sum(_size(p) for p in weights),
                      backend="transformers")


def scan_models_dir(models_dir: Path) -> list[ModelEntry]:
    """GGUF files directly inside ``models_dir`` or one folder down (one entry per split model), and
    transformers folders one level down; symlinks, hidden folders and anything that resolves
    outside the folder are skipped."""
    if not models_dir.is_dir():
        return []
    root = models_dir.resolve()
    found = []
    for candidate in sorted(list(root.glob("*.gguf")) + list(root.glob("*/*.gguf"))):
        if candidate.is_file() and _usable(candidate, root):
            entry = _gguf_entry(candidate, root)
            if entry is not None:
                found.append(entry)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if _usable(folder, root):
            entry = _transformers_entry(folder, root)
            if entry is not None:
                found.append(entry)
    return found


def build_catalog(cli_model: Optional[Path], models_dir: Optional[Path]) -> ModelCatalog:
    entries: list[ModelEntry] = []
    if cli_model is not None:
        resolved = cli_model.resolve()
        entries.append(ModelEntry(resolved.name, str(resolved), "command-line", _size(resolved)))
    embedded = embedded_model_path()
    if embedded is not None:
        entries.append(ModelEntry(EMBEDDED_NAME, str(embedded.resolve()), "embedded", _size(embedded)))
    if models_dir is not None:
        entries.extend(scan_models_dir(models_dir))
    return ModelCatalog.build(entries)
