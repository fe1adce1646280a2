"""Read a local model's shape from its GGUF header(s), finding the other shards of a split file."""
from __future__ import annotations

from pathlib import Path

from core.model_shape import ModelShape, shape_from_headers, split_info
from services.gguf_file import read_header


def shard_paths(path: Path) -> list[Path]:
    info = split_info(path.name)
    if not info:
        return [path]
    stem, _, count = info
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def gguf_shape(path: Path) -> ModelShape:
    """The ModelShape of a GGUF (all shards of a split model); GGUFError when unreadable."""
    paths = shard_paths(Path(path))
    headers = [read_header(p) for p in paths]
    return shape_from_headers(headers, name=Path(path).name, file_bytes=sum(p.stat().st_size for p in paths))
