"""GGUF files made by the tests themselves, with the ``gguf`` package's writer.

* ``copy_gguf``: a full copy of a real model with metadata changed (e.g. a hostile chat template).
* ``write_tiny_gguf``: a small synthetic file with chosen metadata and tensors.
* ``raw_header``: hand-packed bytes for hostile headers the writer refuses to produce.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np


def copy_gguf(src: Path, dst: Path, set_metadata: Optional[dict[str, Any]] = None,
              remove: Iterable[str] = (), drop_tensors: Iterable[str] = ()) -> Path:
    import gguf

    set_metadata = dict(set_metadata or {})
    remove, drop = set(remove), set(drop_tensors)
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name in remove:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = set_metadata.pop(field.name, field.contents())
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for key, value in set_metadata.items():
        vtype = gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.UINT32
        writer.add_key_value(key, value, vtype)
    tensors = [t for t in reader.tensors if t.name not in drop]
    for t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    return dst


def write_tiny_gguf(dst: Path, metadata: Optional[dict[str, Any]] = None,
                    tensors: Optional[dict[str, np.ndarray]] = None, arch: str = "llama") -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(dst), arch=arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
    for name, array in (tensors or {"w": np.zeros((4, 32), dtype=np.float32)}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def raw_header(n_tensors: int = 0, kvs: bytes = b"", n_kv: int = 0, tensor_infos: bytes = b"",
               version: int = 3, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + tensor_infos


def raw_kv_string(key: str, value: bytes, claimed_len: Optional[int] = None) -> bytes:
    n = len(value) if claimed_len is None else claimed_len
    return _gguf_string(key.encode()) + struct.pack("<I", 8) + struct.pack("<Q", n) + value


def raw_kv_u32(key: str, value: int) -> bytes:
    return _gguf_string(key.encode()) + struct.pack("<II", 4, value)


def raw_tensor_info(name: str, shape: tuple[int, ...], ggml_type: int = 0, offset: int = 0,
                    n_dims: Optional[int] = None) -> bytes:
    dims = len(shape) if n_dims is None else n_dims
    return (_gguf_string(name.encode()) + struct.pack("<I", dims) + b"".join(struct.pack("<Q", d) for d in shape)
            + struct.pack("<IQ", ggml_type, offset))
