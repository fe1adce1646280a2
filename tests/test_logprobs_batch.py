"""Log-probabilities in the batched decode loop (embedded model, in-process engine): a reply that asks
for them gets the numbers of its own row of the batch, equal to the same reply run alone, while the
replies beside it (not asking) are unchanged; entries follow the sent text, a stop string included;
a bad count is refused."""
from __future__ import annotations

import threading

import pytest

from backends.base import TokenLogprob, UnsupportedRequestError
from backends.llama_logprobs import LogprobText
from core.options import SamplingOptions
from tests.conftest import ask, batched_engine

pytestmark = pytest.mark.real_model
GREEDY = SamplingOptions(temperature=0.0, max_tokens=10, seed=1, repeat_penalty=1.0)
PROMPTS = ["Name three colours.", "What is the capital of France?", "Count from one to ten."]


@pytest.fixture(scope="module")
def engine(embedded_model):
    with batched_engine(embedded_model, 3) as engine:
        yield engine


def joined(entries) -> str:
    return b"".join(e.token for e in entries).decode("utf-8", "replace")


def collect(stream) -> tuple[str, list]:
    text, entries = "", []
    for delta in stream:
        text += delta
        entries += stream.logprobs.take()
        assert text.startswith(joined(entries))  # an entry goes out once its token's text has
    return text, entries + stream.logprobs.take()


def test_a_reply_gets_its_own_rows_logprobs_in_a_batch(engine):
    alone_text, alone = collect(engine.stream_chat(ask(PROMPTS[1]), GREEDY, threading.Event(), logprobs=4))
    plain_alone = ["".join(engine.stream_chat(ask(p), GREEDY, threading.Event())) for p in (PROMPTS[0], PROMPTS[2])]
    streams = [engine.stream_chat(ask(PROMPTS[0]), GREEDY, threading.Event()),
               engine.stream_chat(ask(PROMPTS[1]), GREEDY, threading.Event(), logprobs=4),
               engine.stream_chat(ask(PROMPTS[2]), GREEDY, threading.Event())]
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, collect(streams[i]))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[0][0], results[2][0]] == plain_alone and results[0][1] == results[2][1] == []
    text, entries = results[1]
    assert joined(entries) == text == alone_text and [e.token for e in entries] == [e.token for e in alone]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in alone], abs=2e-3)
    for e in entries:
        assert len(e.top) == 4 and e.top[0][0] == e.token and e.logprob == pytest.approx(e.top[0][1])


def test_a_stop_string_cuts_the_entries_with_the_text(engine):
    full_text, full = collect(engine.stream_chat("The capital of France is", GREEDY, threading.Event(), logprobs=0))
    word = full_text.split()[1]  # e.g. "Paris." or the second word
    cut_params = GREEDY.model_copy(update={"stop": (word,)})
    text, entries = collect(engine.stream_chat("The capital of France is", cut_params, threading.Event(), logprobs=0))
    assert text == full_text[:full_text.index(word)]
    assert 0 < len(entries) < len(full) and [e.token for e in entries] == [e.token for e in full[:len(entries)]]
    assert joined(entries).startswith(text)  # with the token the stop string began in, if it began mid-token


@pytest.mark.parametrize("bad", [-1, 21, 2.5, True])
def test_bad_counts_are_refused(engine, bad):
    with pytest.raises(UnsupportedRequestError, match="from 0 to 20"):
        engine.stream_chat("Hi", GREEDY, threading.Event(), logprobs=bad)


def test_entries_wait_for_held_back_text():
    text = LogprobText()
    a, b, c = (TokenLogprob(t, -1.0) for t in (b"ab", b"\xe2\x82", b"\xac"))
    text.token(a, 2)
    assert text.sent(1) == []          # part of "ab" still held back (a possible stop string)
    assert text.sent(1) == [a]
    text.token(b, 0)                    # an incomplete character: no text yet
    text.token(c, 1)                    # completes "€"
    assert text.sent(1) == [b, c]
    text.token(TokenLogprob(b"STOP", -1.0), 4)
    assert text.end(0, stopped=True) == []  # only made up the stop string: not reported
