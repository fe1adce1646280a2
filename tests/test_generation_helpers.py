from core.generation import GenerationStats, StopMatcher, Utf8Assembler, decode_tokens_per_s


def stream(matcher, pieces):
    out = "".join(matcher.push(p) for p in pieces)
    return out + matcher.flush()


def test_no_stop_strings_passes_text_through():
    m = StopMatcher(())
    assert [m.push("ab"), m.push("c")] == ["ab", "c"]


def test_stop_string_split_across_deltas_is_cut():
    m = StopMatcher(("<|im_end|>",))
    assert stream(m, ["Hello", " wor", "ld<|im", "_end|>", "more"]) == "Hello world"
    assert m.stopped


def test_held_back_prefix_is_released_when_not_a_stop():
    m = StopMatcher(("###",))
    assert m.push("a#") == "a"
    assert m.push("#b") == "##b"
    assert m.flush() == ""


def test_earliest_of_several_stops_wins():
    m = StopMatcher(("END", "STOP"))
    assert stream(m, ["one STOP two END"]) == "one "


def test_pending_text_flushed_at_end():
    m = StopMatcher(("###",))
    assert stream(m, ["tail#"]) == "tail#"


def test_utf8_assembler_holds_partial_characters():
    a = Utf8Assembler()
    data = "héllo 🙂".encode()
    out = "".join(a.feed(data[i:i + 1]) for i in range(len(data))) + a.flush()
    assert out == "héllo 🙂"
    assert a.feed(b"\xf0\x9f") == ""


def test_decode_rate():
    assert decode_tokens_per_s(11, 1.0, 2.0) == 10.0
    assert decode_tokens_per_s(1, 1.0, 2.0) == 0.0
    assert decode_tokens_per_s(5, None, 2.0) == 0.0


def test_stats_round_trip_and_context_fraction():
    s = GenerationStats(100, 28, 0.2, 80.0, 1.0, 512, "stop")
    assert GenerationStats.from_dict(s.to_dict()) == s
    assert s.context_used == 128 and s.context_fraction == 0.25
