"""Build the model catalog from the embedded model, a --model path and the models folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.model_catalog import ModelCatalog, ModelEntry
from services.paths import EMBEDDED_NAME, embedded_model_path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def scan_models_dir(models_dir: Path) -> list[ModelEntry]:
    """GGUF files directly inside ``models_dir`` or one folder down; symlinks and anything that
    resolves outside the folder are skipped."""
    if not models_dir.is_dir():
        return []
    root = models_dir.resolve()
    found = []
    for candidate in sorted(list(root.glob("*.gguf")) + list(root.glob("*/*.gguf"))):
        if candidate.is_symlink() or not candidate.is_file():
            continue
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root):
            continue
        found.append(ModelEntry(str(resolved.relative_to(root)), str(resolved), "library", _size(resolved)))
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
