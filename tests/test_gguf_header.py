import io
import struct

import numpy as np
import pytest

from core.gguf_header import GGML_TYPES, GGUFError, Limits, parse_header, tensor_nbytes
from services.gguf_file import read_header
from tests.gguf_factory import raw_header, raw_kv_string, raw_kv_u32, raw_tensor_info, write_tiny_gguf


def parse_bytes(data: bytes, limits: Limits = Limits()):
    return parse_header(io.BytesIO(data).read, file_size=len(data), limits=limits)


def test_type_table_matches_gguf_package():
    import gguf

    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert GGML_TYPES[qtype.value][1:] == (block, size), qtype.name


def test_embedded_model_header(embedded_model):
    h = read_header(embedded_model)
    assert h.architecture == "llama"
    assert h.arch_value("block_count") == 30 and h.arch_value("context_length") == 8192
    assert len(h.tensors) == 272
    # Every tensor's size adds up to exactly the data section of the file.
    assert h.data_offset + h.tensor_data_bytes == embedded_model.stat().st_size
    assert h.tensor_index["token_embd.weight"].type_name == "Q8_0"
    assert h.metadata["tokenizer.ggml.tokens"].length == 49152


def test_matches_gguf_reader_on_synthetic_file(tmp_path):
    import gguf

    path = write_tiny_gguf(tmp_path / "t.gguf", {"llama.block_count": 2, "llama.context_length": 512},
                           {"a": np.zeros((3, 64), np.float32), "b": np.ones((128,), np.float16)})
    h = read_header(path)
    ref = gguf.GGUFReader(str(path))
    assert {t.name: int(t.n_bytes) for t in ref.tensors} == {t.name: t.n_bytes for t in h.tensors}
    assert h.arch_value("context_length") == 512


def test_not_gguf_and_empty(tmp_path):
    (tmp_path / "x.gguf").write_text("hello world, not a model")
    with pytest.raises(GGUFError, match="wrong magic"):
        read_header(tmp_path / "x.gguf")
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="shorter than 4 bytes"):
        read_header(tmp_path / "e.gguf")
    with pytest.raises(GGUFError, match="not found"):
        read_header(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a file"):
        read_header(tmp_path)


def test_truncated_real_model(embedded_model, tmp_path):
    data = embedded_model.read_bytes()
    for cut in (10, 1000, 500_000, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated|ends inside"):
            read_header(path)


@pytest.mark.parametrize("data,message", [
    (raw_header(version=1), "unsupported GGUF version"),
    (raw_header(version=99), "unsupported GGUF version"),
    (raw_header(n_tensors=2**60), "tensors; the limit"),
    (raw_header(n_kv=2**40), "metadata entries; the limit"),
    (raw_header(n_kv=1, kvs=raw_kv_string("k", b"", claimed_len=2**62)), "bytes long; the limit"),
    (raw_header(n_kv=1, kvs=raw_kv_string("k", b"\xff\xfe")), "not valid UTF-8"),
    (raw_header(n_kv=2, kvs=raw_kv_u32("a", 1) + raw_kv_u32("a", 2)), "appears twice"),
    (raw_header(n_kv=1, kvs=b"\x01\x00\x00\x00\x00\x00\x00\x00k" + struct.pack("<I", 77)), "unknown value type"),
    (raw_header(n_kv=1, kvs=raw_kv_u32("general.alignment", 0)), "power of two"),
    (raw_header(n_kv=1, kvs=raw_kv_u32("general.alignment", 48)), "power of two"),
    (raw_header(n_kv=1, kvs=raw_kv_u32("general.alignment", 2**30)), "power of two"),
    (raw_header(n_tensors=1, tensor_infos=raw_tensor_info("t", (32,) * 9)), "dimensions"),
    (raw_header(n_tensors=1, tensor_infos=raw_tensor_info("t", (0, 4))), "impossible shape"),
    (raw_header(n_tensors=1, tensor_infos=raw_tensor_info("t", (32,), ggml_type=99)), "unknown type"),
    (raw_header(n_tensors=1, tensor_infos=raw_tensor_info("t", (33,), ggml_type=2)), "block size"),
    (raw_header(n_tensors=1, tensor_infos=raw_tensor_info("t", (32,), offset=7)), "not aligned"),
    (raw_header(n_tensors=1, tensor_infos=raw_tensor_info("t", (1 << 30,))), "truncated or corrupt|before its tensor"),
    (raw_header(n_tensors=2, tensor_infos=raw_tensor_info("t", (32,)) + raw_tensor_info("t", (32,))), "appears twice"),
])
def test_hostile_headers_are_rejected(data, message):
    with pytest.raises(GGUFError, match=message):
        parse_bytes(data + b"\0" * 64)


def test_header_cut_short():
    with pytest.raises(GGUFError, match="ends inside"):
        parse_bytes(raw_header(n_tensors=1))
    with pytest.raises(GGUFError, match="ends inside"):
        parse_bytes(raw_header(n_kv=1, kvs=raw_kv_string("k", b"abc", claimed_len=100)))


def test_overlapping_tensors_rejected():
    infos = raw_tensor_info("a", (64,), offset=0) + raw_tensor_info("b", (64,), offset=128)
    data = raw_header(n_tensors=2, tensor_infos=infos)
    padded = data + b"\0" * (-len(data) % 32) + b"\0" * 512
    with pytest.raises(GGUFError, match="overlap"):
        parse_bytes(padded)


def test_header_size_cap_applies_to_remote_reads():
    big = raw_header(n_kv=1, kvs=raw_kv_string("k", b"x" * 5000))
    with pytest.raises(GGUFError, match="larger than"):
        parse_header(io.BytesIO(big).read, limits=Limits(max_header_bytes=1024))


def test_long_arrays_are_summarised(tmp_path):
    path = write_tiny_gguf(tmp_path / "a.gguf", {"tokenizer.ggml.tokens": [f"t{i}" for i in range(5000)],
                                                 "short": [1, 2, 3]})
    h = read_header(path)
    assert h.metadata["tokenizer.ggml.tokens"].length == 5000
    assert h.metadata["short"] == [1, 2, 3]


def test_tensor_nbytes():
    assert tensor_nbytes(0, (10, 3)) == 120
    assert tensor_nbytes(12, (256, 2)) == 288  # Q4_K: 144 bytes per 256 values
