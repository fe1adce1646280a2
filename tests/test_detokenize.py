"""Incremental detokenisation (core/detokenize.py) with a byte-level toy vocabulary whose tokens
split multi-byte characters, and a SentencePiece-like one whose tokens carry a leading space."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.detokenize import IncrementalDetokenizer

BYTES = [bytes([b]) for b in range(256)]


def byte_decode(ids) -> str:
    return b"".join(BYTES[i] for i in ids).decode("utf-8", errors="replace")


SP_VOCAB = ["▁Hello", "▁world", "!", "▁the", "re", "▁é"]


def sp_decode(ids) -> str:
    # SentencePiece drops the leading space of the first piece it decodes
    return "".join(SP_VOCAB[i] for i in ids).replace("▁", " ").lstrip(" ")


def stream(decode, ids) -> list[str]:
    d = IncrementalDetokenizer(decode)
    return [d.push(i) for i in ids] + [d.flush()]


def test_multibyte_characters_wait_until_complete():
    ids = list("héllo ✓".encode())
    deltas = stream(byte_decode, ids)
    assert "".join(deltas) == "héllo ✓"
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[ids.index(0xC3)] == ""  # first byte of é: held back


def test_leading_spaces_survive_the_window():
    deltas = stream(sp_decode, [0, 1, 2, 3, 4, 5])
    assert "".join(deltas) == "Hello world! there é"


def test_an_incomplete_character_at_the_end_is_flushed_as_a_replacement():
    assert "".join(stream(byte_decode, list("ok".encode()) + [0xE2, 0x9C])) == "ok\ufffd"


@given(st.text(max_size=200))
def test_any_text_streams_to_itself(text):
    assert "".join(stream(byte_decode, list(text.encode()))) == text


def test_long_streams_keep_a_short_window():
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return byte_decode(ids)

    text = "abc" * 2000
    assert "".join(stream(decode, list(text.encode()))) == text
    assert max(calls) < 80
