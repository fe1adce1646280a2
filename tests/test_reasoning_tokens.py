"""A reasoning model's <think> block shows its size in the model's tokens: counted by the backend as the
tokens come (GenerationStats.reasoning_tokens), live while the reply streams, words only for a reply
saved before counts were kept. The embedded model does not think aloud, so a grammar makes it write a
<think> block; its per-token log-probabilities give the exact tokens to compare with."""
from __future__ import annotations

import threading

import pytest

from backends.base import LoadSpec
from backends.manager import ModelManager
from core.chat_history import add_user_message, live_reasoning_tokens, model_messages, to_display, with_reply
from core.generation import GenerationStats, ReasoningCounter
from core.options import LoadOptions, SamplingOptions
from core.settings import AppSettings
from services.local_models import build_catalog
from ui import chat_handlers as h
from ui.context import AppContext

THINKING = 'root ::= "<think>" [a-z ]{8,40} "</think>" [A-Za-z !.]{1,12}'
STATS = GenerationStats(prompt_tokens=5, completion_tokens=30, ttft_s=0.1, decode_tokens_per_s=20.0, total_s=1.5,
                        n_ctx=1024, finish_reason="stop", reasoning_tokens=17)


def count(pieces: list[str]) -> int:
    counter = ReasoningCounter()
    for piece in pieces:
        if counter.active:
            counter.feed(piece)
    return counter.tokens


def test_the_counter_counts_the_leading_block_in_tokens():
    assert count(["<think>", "Hmm", ",", " ok", "</think>", "Hi", "!"]) == 5
    assert count(["\n", "<", "th", "ink", ">", "a", " b", "</", "think", ">\n\nHello"]) == 10  # tags split up
    assert count(["<think>", "still", " going"]) == 3  # cut off inside the block: all of it so far
    assert count(["Hello", " <think>", "x", "</think>"]) == 0  # a block must open the reply
    assert count(["<thin", "g"]) == 0
    assert count([]) == 0


def test_the_block_header_says_tokens():
    text = "<think>The user greets me. I should greet back politely.</think>\n\nHello there!"
    done = with_reply(add_user_message((), "Hi"), text, stats=STATS)
    assert to_display(done)[-1]["content"].startswith("<details><summary>Reasoning · 17 tokens</summary>")
    live = with_reply(add_user_message((), "Hi"), "<think>Still thinking about", reasoning_tokens=6)
    assert "Thinking… · 6 tokens" in to_display(live)[-1]["content"]
    one = with_reply(add_user_message((), "Hi"), "<think>Hm", reasoning_tokens=1)
    assert "Thinking… · 1 token<" in to_display(one)[-1]["content"]
    saved_before = with_reply(add_user_message((), "Hi"), text)  # no count known: words, said as words
    assert "Reasoning · 9 words" in to_display(saved_before)[-1]["content"]


def test_live_count_follows_the_open_block_then_stays():
    assert live_reasoning_tokens("Hello", 3, None) is None
    assert live_reasoning_tokens("<think>a b", 4, None) == 4
    assert live_reasoning_tokens("<think>a b c", 6, 4) == 6
    assert live_reasoning_tokens("<think>a b c</think>Hi", 9, 6) == 6


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, embedded_model):
    settings = AppSettings(data_dir=tmp_path_factory.mktemp("reasoning"), load_options=LoadOptions(n_ctx=1024))
    manager = ModelManager()
    context = AppContext(settings, manager, lambda: build_catalog(None, settings.models_dir))
    manager.load(LoadSpec(str(embedded_model), settings.load_options, display_name="embedded"))
    yield context
    manager.close()


@pytest.mark.real_model
def test_a_think_block_is_counted_in_the_models_tokens(ctx):
    params = SamplingOptions(temperature=0.0, max_tokens=60, seed=1, repeat_penalty=1.0, grammar=THINKING)
    # The reply's own tokens, one entry each (same greedy reply): the block ends with the token that
    # completes "</think>".
    stream = ctx.manager.stream_chat([{"role": "user", "content": "Hi"}], params, threading.Event(), logprobs=0)
    text = "".join(stream)
    tokens = [e.token for e in stream.logprobs.take()]
    expected = next(i + 1 for i in range(len(tokens)) if b"</think>" in b"".join(tokens[:i + 1]))
    assert text.startswith("<think>") and 3 < expected < len(tokens)
    assert stream.stats.reasoning_tokens == expected

    values = {**SamplingOptions().model_dump(), **params.model_dump(), "stop": ""}
    display, history = list(h.send(ctx, "s1", "Hi", (), "", [values[n] for n in h.SAMPLING_FIELDS]))[-1]
    assert history[-1].content == text and history[-1].stats.reasoning_tokens == expected
    assert display[-1]["content"].startswith(f"<details><summary>Reasoning · {expected} tokens</summary>")


def test_a_continued_reply_counts_only_what_extends_an_open_block():
    def counter(content):
        return ReasoningCounter.for_reply_to([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": content}])

    open_block = counter("<think>so far")
    for piece in [" more", "</", "think>", "Answer"]:
        if open_block.active:
            open_block.feed(piece)
    assert open_block.tokens == 3 and not open_block.active
    assert not counter("<think>done</think>Answer").active  # closed in the prompt: nothing to add
    assert not counter("Plain answer").active               # a block opens only a reply's start
    fresh = ReasoningCounter.for_reply_to([{"role": "user", "content": "Hi"}])
    fresh.feed("<think>")
    assert fresh.tokens == 1 and fresh.active


def test_a_continue_keeps_the_block_it_was_cut_in():
    cut = with_reply(add_user_message((), "Hi"), "<think>let me see")
    assert model_messages(cut)[-1]["role"] == "user"  # a later turn: the block is not sent back
    assert model_messages(cut, continuing=True)[-1] == {"role": "assistant", "content": "<think>let me see"}
    answered = with_reply(add_user_message((), "Hi"), "<think>hm</think>The answer")
    assert model_messages(answered, continuing=True)[-1]["content"] == "The answer"


@pytest.mark.real_model
def test_continue_inside_a_think_block_adds_to_its_count(ctx):
    def values(grammar, max_tokens):
        params = SamplingOptions(temperature=0.0, max_tokens=max_tokens, seed=1, repeat_penalty=1.0, grammar=grammar)
        merged = {**SamplingOptions().model_dump(), **params.model_dump(), "stop": ""}
        return [merged[n] for n in h.SAMPLING_FIELDS], params

    first, _ = values('root ::= "<think>" [a-z ]{30,60} "</think>" [A-Za-z]{1,5}', 6)  # cut inside the block
    _, cut = list(h.send(ctx, "s2", "Hi", (), "", first))[-1]
    assert cut[-1].content.startswith("<think>") and "</think>" not in cut[-1].content
    assert cut[-1].stats.finish_reason == "length" and cut[-1].stats.reasoning_tokens == 6

    rest, params = values('root ::= [a-z ]{2,12} "</think>" [A-Za-z !.]{1,12}', 40)
    # The continuation alone, token by token: the block ends with the token that completes "</think>".
    stream = ctx.manager.stream_chat(model_messages(cut, continuing=True), params, threading.Event(), logprobs=0)
    text = "".join(stream)
    tokens = [e.token for e in stream.logprobs.take()]
    own = next(i + 1 for i in range(len(tokens)) if b"</think>" in b"".join(tokens[:i + 1]))
    assert stream.stats.reasoning_tokens == own

    display, history = list(h.continue_reply(ctx, "s2", cut, "", rest))[-1]
    assert history[-1].content == cut[-1].content + text
    assert history[-1].stats.reasoning_tokens == 6 + own
    assert display[-1]["content"].startswith(f"<details><summary>Reasoning · {6 + own} tokens</summary>")
