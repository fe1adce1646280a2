"""logprobs / top_logprobs on /v1 with the official ``openai`` client against the running app (embedded
model, llama.cpp backend in its worker): the chosen greedy token is the most likely one, log-probabilities
are <= 0 and the top ones sum to at most 1, streamed equals whole, the legacy completions shape, and one
token's log-probability equals llama-cpp-python's own (``Llama(logits_all=True)``) within 1e-3."""
from __future__ import annotations

import math

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.real_model
ASK = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "seed": 1, "extra_body": {"repeat_penalty": 1.0}}
PROMPT = "The capital of France is"
APP_ARGS = ("--ctx", "1024")  # the conftest's module-scoped app


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=app.url + "v1", api_key="unused-on-loopback", max_retries=0)


def check_entries(content, top_n: int) -> None:
    assert content, "no token log-probabilities"
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == top_n
        if not top_n:
            continue
        best = max(t.logprob for t in entry.top_logprobs)
        # greedy with no sampler step before it: the chosen token is the most likely one
        assert entry.logprob == pytest.approx(best, abs=1e-6)
        assert entry.token == entry.top_logprobs[0].token
        assert all(t.logprob <= 0 for t in entry.top_logprobs)
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-6
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)


def test_chat_logprobs_whole_and_streamed_agree(client):
    whole = client.chat.completions.create(model="", messages=ASK, max_tokens=12, logprobs=True, top_logprobs=5,
                                           **GREEDY)
    content = whole.choices[0].logprobs.content
    check_entries(content, 5)
    assert "".join(e.token for e in content) == whole.choices[0].message.content
    assert len(content) == whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="", messages=ASK, max_tokens=12, logprobs=True,
                                                 top_logprobs=5, stream=True, **GREEDY))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)


def test_logprobs_without_top_and_not_asked(client):
    reply = client.chat.completions.create(model="", messages=ASK, max_tokens=4, logprobs=True, **GREEDY)
    check_entries(reply.choices[0].logprobs.content, 0)
    plain = client.chat.completions.create(model="", messages=ASK, max_tokens=4, **GREEDY)
    assert plain.choices[0].logprobs is None


def test_completions_legacy_logprobs_match_llama_cpp(client, embedded_model):
    reply = client.completions.create(model="", prompt=PROMPT, max_tokens=6, logprobs=3, **GREEDY)
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == reply.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == len(PROMPT)
    assert [b - a for a, b in zip(lp.text_offset, lp.text_offset[1:])] == [len(t) for t in lp.tokens[:-1]]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 0 < len(top) <= 3 and max(top.values()) == pytest.approx(logprob, abs=1e-6) and top[token] == logprob

    streamed = list(client.completions.create(model="", prompt=PROMPT, max_tokens=6, logprobs=3, stream=True,
                                              **GREEDY))
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in streamed if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert tokens == lp.tokens and offsets == lp.text_offset

    # The same numbers from llama-cpp-python's own evaluation of the prompt and the first tokens.
    from llama_cpp import Llama

    # flash attention as the app loads the model (without it the same logprob differs by ~5e-3)
    llm = Llama(str(embedded_model), n_ctx=256, logits_all=True, verbose=False, n_threads=2, flash_attn=True)
    prompt_ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    reply_ids = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in lp.tokens[:3]]
    assert all(len(ids) == 1 for ids in reply_ids)
    llm.eval(prompt_ids + [ids[0] for ids in reply_ids[:2]])
    for k in range(3):
        row = np.asarray(llm.scores[len(prompt_ids) - 1 + k], dtype=np.float64)
        ref = row[reply_ids[k][0]] - (row.max() + math.log(np.exp(row - row.max()).sum()))
        assert lp.token_logprobs[k] == pytest.approx(ref, abs=1e-3)
    llm.close()


@pytest.mark.parametrize("body,needle", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs needs logprobs"),
])
def test_bad_logprob_requests_get_400(app, body, needle):
    r = httpx.post(app.url + "v1/chat/completions", json={"messages": ASK, "max_tokens": 2, **body})
    assert r.status_code == 400 and needle in r.json()["error"]["message"]


@pytest.mark.parametrize("value", [21, -1, True, "3"])
def test_bad_legacy_logprobs_get_400(app, value):
    r = httpx.post(app.url + "v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "logprobs": value})
    assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]
