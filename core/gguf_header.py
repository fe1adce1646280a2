"""A defensive GGUF header parser.

It reads only the header (metadata and tensor table) from any ``read(n) -> bytes`` source, with
caps on every count and size, and checks every tensor against the file size, so that truncated
or hostile files are rejected with a clear message before llama.cpp ever sees them.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

GGUF_MAGIC = b"GGUF"

# ggml type id -> (name, elements per block, bytes per block). From ggml.h / gguf-py constants.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# Value types of the metadata section.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 256 * 1024 * 1024
    max_tensors: int = 100_000
    max_kv: int = 65_536
    max_key_bytes: int = 1_024
    max_string_bytes: int = 16 * 1024 * 1024
    max_array_len: int = 16 * 1024 * 1024
    max_dims: int = 8
    keep_array_len: int = 4_096  # longer arrays are summarised, not stored


class GGUFError(ValueError):
    """The file is not a usable GGUF. The message is meant for the user."""


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array (a vocabulary, merges) kept as its element type and length only."""
    value_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section
    n_bytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: Optional[int] = None
    header_bytes: int = 0
    tensor_index: dict[str, TensorInfo] = field(default_factory=dict, repr=False, compare=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``{architecture}.{key}`` from the metadata, e.g. ``arch_value("block_count")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    name, block, size = GGML_TYPES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % block:
        raise GGUFError(f"tensor row of {shape[0]} elements is not a multiple of the {name} block size {block}")
    return n // block * size


class _Cursor:
    def __init__(self, read: Callable[[int], bytes], limits: Limits) -> None:
        self._read = read
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self.offset = 0  # absolute position in the file

    def take(self, n: int) -> bytes:
        if self.offset + n > self._limits.max_header_bytes:
            raise GGUFError(f"GGUF header is larger than {self._limits.max_header_bytes} bytes")
        while len(self._buf) - self._pos < n:
            want = max(n - (len(self._buf) - self._pos), 1 << 20)
            chunk = self._read(want)
            if not chunk:
                raise GGUFError(f"file ends inside the GGUF header (at byte {self.offset + len(self._buf) - self._pos})")
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk
        out = bytes(self._buf[self._pos: self._pos + n])
        self._pos += n
        self.offset += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, cap: int, what: str) -> str:
        n = self.unpack("<Q")
        if n > cap:
            raise GGUFError(f"{what} is {n} bytes long; the limit is {cap}")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} is not valid UTF-8") from None


def _read_value(cur: _Cursor, vtype: int, limits: Limits, key: str, depth: int = 0) -> Any:
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype])
    if vtype == _STRING:
        return cur.string(limits.max_string_bytes, f"metadata value {key!r}")
    if vtype == _ARRAY:
        if depth >= 2:
            raise GGUFError(f"metadata {key!r} nests arrays too deeply")
        etype = cur.unpack("<I")
        count = cur.unpack("<Q")
        if count > limits.max_array_len:
            raise GGUFError(f"metadata array {key!r} has {count} items; the limit is {limits.max_array_len}")
        if etype not in _SCALARS and etype not in (_STRING, _ARRAY):
            raise GGUFError(f"metadata array {key!r} has unknown element type {etype}")
        if count > limits.keep_array_len:
            if etype in _SCALARS:
                cur.take(struct.calcsize(_SCALARS[etype]) * count)
            else:
                for _ in range(count):
                    _read_value(cur, etype, limits, key, depth + 1)
            return ArraySummary(etype, count)
        return [_read_value(cur, etype, limits, key, depth + 1) for _ in range(count)]
    raise GGUFError(f"metadata {key!r} has unknown value type {vtype}")


def parse_header(read: Callable[[int], bytes], file_size: Optional[int] = None,
                 limits: Limits = Limits()) -> GGUFHeader:
    """Parse a GGUF header from ``read``. ``file_size`` (when known) bounds every tensor."""
    cur = _Cursor(read, limits)
    try:
        magic = cur.take(4)
    except GGUFError:
        raise GGUFError("not a GGUF file: it is shorter than 4 bytes") from None
    if magic != GGUF_MAGIC:
        raise GGUFError("not a GGUF file (wrong magic bytes)")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version} (supported: 2 and 3)")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    if n_tensors > limits.max_tensors:
        raise GGUFError(f"header claims {n_tensors} tensors; the limit is {limits.max_tensors}")
    if n_kv > limits.max_kv:
        raise GGUFError(f"header claims {n_kv} metadata entries; the limit is {limits.max_kv}")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string(limits.max_key_bytes, "metadata key")
        if key in metadata:
            raise GGUFError(f"metadata key {key!r} appears twice")
        metadata[key] = _read_value(cur, cur.unpack("<I"), limits, key)

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1) or alignment > 1 << 16:
        raise GGUFError(f"general.alignment {alignment!r} is not a power of two up to 65536")

    raw_tensors = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string(limits.max_key_bytes, "tensor name")
        if name in seen:
            raise GGUFError(f"tensor {name!r} appears twice")
        seen.add(name)
        n_dims = cur.unpack("<I")
        if not 1 <= n_dims <= limits.max_dims:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (1..{limits.max_dims} allowed)")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        if any(d == 0 or d > 1 << 40 for d in shape):
            raise GGUFError(f"tensor {name!r} has an impossible shape {shape}")
        ggml_type = cur.unpack("<I")
        if ggml_type not in GGML_TYPES:
            raise GGUFError(f"tensor {name!r} has unknown type {ggml_type}")
        offset = cur.unpack("<Q")
        if offset % alignment:
            raise GGUFError(f"tensor {name!r} data is not aligned to {alignment} bytes")
        try:
            n_bytes = tensor_nbytes(ggml_type, shape)
        except GGUFError as exc:
            raise GGUFError(f"tensor {name!r}: {exc}") from None
        raw_tensors.append(TensorInfo(name, shape, ggml_type, offset, n_bytes))

    header_end = cur.offset
    data_offset = (header_end + alignment - 1) // alignment * alignment
    if file_size is not None:
        if data_offset > file_size and raw_tensors:
            raise GGUFError("file ends before its tensor data starts (truncated download?)")
        for t in raw_tensors:
            end = data_offset + t.offset + t.n_bytes
            if end > file_size:
                raise GGUFError(
                    f"tensor {t.name!r} ends at byte {end} but the file has {file_size} bytes "
                    "(truncated or corrupt file)")
    previous_end, previous_name = 0, None
    for t in sorted(raw_tensors, key=lambda t: t.offset):
        if t.offset < previous_end:
            raise GGUFError(f"tensors {previous_name!r} and {t.name!r} overlap")
        previous_end, previous_name = t.offset + t.n_bytes, t.name
    tensors = tuple(raw_tensors)
    return GGUFHeader(version, metadata, tensors, alignment, data_offset, file_size, header_end,
                      {t.name: t for t in tensors})
