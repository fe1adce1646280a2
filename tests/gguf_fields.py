"""Where each field of a GGUF header sits, by kind, for the mutation fuzz (tests/test_gguf_fuzz.py).

The map comes from a plain ``struct`` walk of the well-formed original (not the parser under test). ``reduced_header`` re-packs the embedded model's header with its three 49k-entry tokenizer arrays
cut to a few entries and ``general.alignment`` written out: every kind of field is still there (counts,
string lengths, value and array types, dims, tensor types, offsets, alignment), but a parse takes about a
millisecond instead of 0.17 s, so 1000 mutations fit in CI, and a field picked at random is a structural
one far more often than a vocabulary string."""
from __future__ import annotations

import random
import struct
from pathlib import Path

SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


class Header:
    """A small walk of a well-formed GGUF header with ``struct`` (independent of core/gguf_header):
    ``kinds`` maps a kind of field to [(offset, size, value)]; ``entries`` keeps each metadata entry's
    span, and for arrays where the items start and where the first ``keep`` items end."""

    def __init__(self, buf: bytes, keep: int = 64) -> None:
        self.buf, self.keep = buf, keep
        self.kinds: dict[str, list[tuple[int, int, int]]] = {k: [] for k in (
            "version", "count", "length", "type", "dims", "offset", "alignment")}
        self.entries: list[tuple[str, int, int, int, int]] = []  # key, start, items_start, kept_end, end
        self.pos = 4
        self._num("version", 4)
        n_tensors, n_kv = self._num("count", 8), self._num("count", 8)
        for _ in range(n_kv):
            start = self.pos
            key = self._str()
            vtype = self._num("type", 4)
            items_start = kept_end = -1
            if vtype == ARRAY:
                itype, count = self._num("type", 4), self._num("count", 8)
                items_start = self.pos
                for k in range(count):
                    if k == keep:
                        kept_end = self.pos
                    self._value(itype, key)
            else:
                self._value(vtype, key)
            self.entries.append((key, start, items_start, kept_end, self.pos))
        self.tensors_start = self.pos
        for _ in range(n_tensors):
            self._str()
            for _ in range(self._num("dims", 4)):
                self._num("dims", 8)
            self._num("type", 4)
            self._num("offset", 8)
        self.end = self.pos

    def _num(self, kind: str, size: int) -> int:
        value = int.from_bytes(self.buf[self.pos:self.pos + size], "little")
        self.kinds[kind].append((self.pos, size, value))
        self.pos += size
        return value

    def _str(self) -> bytes:
        n = self._num("length", 8)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def _value(self, vtype: int, key: bytes) -> None:
        if vtype == STRING:
            self._str()
        elif key == b"general.alignment":
            self._num("alignment", SCALAR_SIZES[vtype])
        else:
            self.pos += SCALAR_SIZES[vtype]  # nested arrays do not occur in the embedded model


def read_header(path: Path, limit: int = 4 << 20) -> Header:
    with open(path, "rb") as fh:
        return Header(fh.read(limit))


def reduced_header(path: Path, dst: Path, keep: int = 64) -> Path:
    """A copy of ``path``'s header with the tokenizer arrays cut to ``keep`` entries and an explicit
    ``general.alignment``, followed by a sparse data region as long as the original's."""
    head = read_header(path)
    buf = head.buf
    out = bytearray(buf[:16] + struct.pack("<Q", len(head.entries) + 1))
    for key, start, items_start, kept_end, end in head.entries:
        if key.decode() in BIG_ARRAYS and kept_end > 0:
            count_at = items_start - 8
            out += buf[start:count_at] + struct.pack("<Q", keep) + buf[items_start:kept_end]
        else:
            out += buf[start:end]
    out += struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 32)
    out += buf[head.tensors_start:head.end]
    data_start = -(-len(out) // 32) * 32
    old_data_start = -(-head.end // 32) * 32
    out += bytes(data_start - len(out))
    with open(dst, "wb") as fh:
        fh.write(out)
        fh.truncate(data_start + path.stat().st_size - old_data_start)
    return dst


def mutate(data: bytes, head: Header, rng: random.Random) -> tuple[str, bytearray]:
    """One seeded mutation: a kind first (so each gets its share), then a field of that kind, then a
    hostile value for it. Returns the kind and the mutated bytes."""
    out, fields, header_end = bytearray(data), head.kinds, head.end
    kinds = [k for k, v in fields.items() if v] + ["bytes", "cut", "shift"]
    kind = rng.choice(kinds)
    if kind == "bytes":  # random bytes anywhere in the header (string contents, values)
        for _ in range(rng.randrange(1, 16)):
            out[rng.randrange(header_end)] = rng.randrange(256)
        return kind, out
    if kind == "cut":  # the file ends inside the header
        del out[rng.randrange(4, header_end):]
        return kind, out
    if kind == "shift":  # bytes dropped inside the header: every later field is read out of place
        at = rng.randrange(8, header_end - 8)
        del out[at: at + rng.randrange(1, 64)]
        return kind, out
    at, size, value = rng.choice(fields[kind])
    top = 2 ** (8 * size)
    choices = {
        "count": (0, 1, value - 1, value + 1, value * 2, 2**31, 2**32, 2**63),
        "length": (0, value - 1, value + 1, 2**16, 2**31, 2**32 + value, 2**63),
        "type": (0, 7, 8, 9, 10, 12, 13, 31, 39, 255, 2**31),
        "dims": (0, 1, 5, value + 1, value * 2, 2**31, 2**32, 2**62),
        "offset": (value + 1, value + 16, value + 32, value - 32, 2**40, 2**63, 0),
        "alignment": (0, 1, 3, 48, 2**16, 2**17, 2**31),
        "version": (0, 1, 4, 2**31),
    }[kind]
    new = rng.choice(choices + (rng.randrange(top),)) % top
    out[at:at + size] = new.to_bytes(size, "little")
    return kind, out
