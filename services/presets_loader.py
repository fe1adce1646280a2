"""Find and read preset files: the ones shipped in ``presets/`` and the user's in the data folder.
A broken file is reported (file and field) and skipped; it never stops the others."""
from __future__ import annotations

from pathlib import Path

from core.presets import Preset, PresetError, parse_preset
from services.yaml_files import DataFileError, load_data_file

MAX_PRESETS = 500


def load_presets(folders: list[Path]) -> tuple[dict[str, Preset], list[str]]:
    """Presets by key (``folder-name/file-stem`` for user files, file stem for shipped ones)."""
    found: dict[str, Preset] = {}
    errors: list[str] = []
    for index, folder in enumerate(folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.y*ml"))[:MAX_PRESETS]:
            key = path.stem if index == 0 else f"user/{path.stem}"
            try:
                found[key] = parse_preset(load_data_file(path), path.name)
            except (PresetError, DataFileError) as exc:
                errors.append(str(exc))
    return found, errors
