"""Read a local transformers model folder without loading it: config.json, the safetensors headers
(names, shapes, dtypes; never the weights) and the checks that come before any import of torch.

Refused with a message that says why: no config.json, pickle-only weights (``.bin``/``.pt``: they
can run code when loaded), custom code (``auto_map``; we never pass ``trust_remote_code``), missing
shards, corrupt headers, and (when the caller passes the supported list) unsupported architectures.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional

from core.hf_model_shape import DTYPE_BYTES, ConfigError, ModelDims, TensorInfo, dims_from_config

MAX_JSON_BYTES = 16 << 20          # config.json, index files
MAX_HEADER_BYTES = 100 << 20       # a safetensors header (JSON)
MAX_TENSORS = 200_000
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_FILE = "model.safetensors.index.json"


class RepoError(ValueError):
    """The folder cannot be loaded; the message is for the user."""


@dataclass(frozen=True)
class HfRepo:
    path: Path
    config: dict
    dims: ModelDims
    tensors: tuple[TensorInfo, ...]
    weight_files: tuple[Path, ...]
    weight_bytes: int
    quant_method: str          # "" (unquantised), "gptq", "bitsandbytes", "awq", ...
    chat_template_file: bool   # chat_template.jinja or a template in tokenizer_config.json


def _read_json(path: Path, what: str) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise RepoError(f"{what} is larger than {MAX_JSON_BYTES >> 20} MiB.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except RepoError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RepoError(f"{what} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise RepoError(f"{what} is not a JSON object.")
    return data


def read_safetensors_header(path: Path) -> tuple[TensorInfo, ...]:
    """The tensor table of one safetensors file; every tensor must lie inside the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise RepoError(f"{path.name} is not a safetensors file (too short).")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise RepoError(f"{path.name} has a corrupt header (length {n}, file {size} bytes).")
            header = json.loads(fh.read(n).decode("utf-8"))
    except RepoError:
        raise
    except OSError as exc:
        raise RepoError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise RepoError(f"{path.name} has a corrupt header (not JSON).") from None
    if not isinstance(header, dict) or len(header) > MAX_TENSORS:
        raise RepoError(f"{path.name} has a corrupt header.")
    data_size = size - 8 - n
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = (dtype in DTYPE_BYTES and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_size)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise RepoError(f"{path.name}: tensor {str(name)[:80]!r} has a corrupt entry.")
        info = TensorInfo(str(name), shape, dtype)
        if info.stored_bytes != end - start:
            raise RepoError(f"{path.name}: tensor {str(name)[:80]!r} does not match its size.")
        tensors.append(info)
    return tuple(tensors)


def _weight_files(root: Path) -> tuple[Path, ...]:
    index = root / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index, INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise RepoError(f"{INDEX_FILE} has no weight_map.")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") \
                    or not name.endswith(".safetensors"):
                raise RepoError(f"{INDEX_FILE} names an invalid shard {str(name)[:80]!r}.")
        missing = [name for name in names if not (root / name).is_file()]
        if missing:
            raise RepoError(f"{len(missing)} of {len(names)} weight shards are missing (e.g. {missing[0]}): "
                            "the download is incomplete.")
        return tuple(root / name for name in names)
    return tuple(sorted(p for p in root.glob("*.safetensors") if p.is_file()))


def _refuse_remote_code(root: Path, config: dict) -> None:
    sources = [("config.json", config)]
    tok_cfg = root / "tokenizer_config.json"
    if tok_cfg.is_file():
        sources.append(("tokenizer_config.json", _read_json(tok_cfg, "tokenizer_config.json")))
    for what, data in sources:
        if data.get("auto_map"):
            raise RepoError(f"This model needs its own Python code ({what} has auto_map). FitChat never runs "
                            "code from a model folder (trust_remote_code=False); pick a model that "
                            "transformers supports natively.")


def inspect_repo(path: str | Path, supported_model_types: Optional[Collection[str]] = None) -> HfRepo:
    """Check a model folder and read what planning and loading need. ``supported_model_types`` is
    the ``model_type`` list AutoModelForCausalLM knows (the worker passes it; None skips that check)."""
    root = Path(path)
    if not root.is_dir():
        raise RepoError(f"{root} is not a folder with a transformers model (config.json and safetensors).")
    if not (root / "config.json").is_file():
        raise RepoError(f"{root.name} has no config.json: it is not a transformers model folder.")
    config = _read_json(root / "config.json", "config.json")
    _refuse_remote_code(root, config)
    files = _weight_files(root)
    if not files:
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise RepoError(f"{root.name} has only pickle weights ({', '.join(pickles[:3])}). FitChat loads "
                            "only safetensors: pickle files can run code when they are opened. Use the "
                            "model's safetensors version.")
        raise RepoError(f"{root.name} has no weights (*.safetensors).")
    model_type = str(config.get("model_type", ""))
    if supported_model_types is not None and model_type not in supported_model_types:
        arch = ", ".join(map(str, config.get("architectures") or [])) or "unknown"
        raise RepoError(f"Architecture {model_type or '(no model_type)'} ({arch}) is not supported by the "
                        "installed transformers as a causal language model.")
    try:
        dims = dims_from_config(config)
    except ConfigError as exc:
        raise RepoError(str(exc)) from None
    tensors: list[TensorInfo] = []
    for f in files:
        tensors.extend(read_safetensors_header(f))
        if len(tensors) > MAX_TENSORS:
            raise RepoError(f"{root.name} has more than {MAX_TENSORS} tensors.")
    quant = config.get("quantization_config")
    quant_method = str(quant.get("quant_method", "unknown")) if isinstance(quant, dict) else ""
    tok_cfg = root / "tokenizer_config.json"
    has_template = (root / "chat_template.jinja").is_file() or (
        tok_cfg.is_file() and bool(_read_json(tok_cfg, "tokenizer_config.json").get("chat_template")))
    return HfRepo(root, config, dims, tuple(tensors), files, sum(f.stat().st_size for f in files),
                  quant_method, has_template)
