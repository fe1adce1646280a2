"""The OpenAI-compatible API, driven by the official ``openai`` client against the running app."""
from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from tests.conftest import start_app

pytestmark = pytest.mark.real_model
KEY = "test-key-0123456789abcdef"


MODEL = ""  # the loaded model's name is also accepted; any other name is a 404 (tests/test_openai_sampling.py)


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=app.url + "v1", api_key="unused-on-loopback")


def test_models_lists_the_loaded_model(client):
    models = client.models.list().data
    assert len(models) == 1 and "SmolLM2" in models[0].id


def test_chat_completion_whole(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                           max_tokens=12, temperature=0, seed=1)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens)


def test_chat_completion_streamed_with_usage(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=24, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_text_completion(client):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert reply.choices[0].text and reply.usage.prompt_tokens > 3
    streamed = list(client.completions.create(model=MODEL, prompt="One, two,", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in streamed)


@pytest.mark.parametrize("body,status", [
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 99}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400),
    ({"messages": []}, 400),
    ("not json", 400),
])
def test_bad_requests_get_400(app, body, status):
    raw = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(app.url + "v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["error"]["message"]


def test_disconnect_mid_stream_frees_the_model(app, client):
    with httpx.stream("POST", app.url + "v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 3000,
                            "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    # The next request is served at once: the abandoned generation stopped.
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           timeout=10)
    assert reply.choices[0].message.content is not None


def test_lan_mode_needs_keys(tmp_path):
    lan = start_app(["--listen", "--auth", "alice:correct-horse", "--api-key", KEY, "--no-default-model"], tmp_path)
    try:
        assert httpx.get(lan.url + "v1/models").status_code == 401
        assert httpx.get(lan.url + "v1/models", headers={"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
        ok = httpx.get(lan.url + "v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["data"] == []
    finally:
        lan.stop()


def test_a_trailing_assistant_message_is_continued(app, client):
    user = {"role": "user", "content": "Count from one to thirty in words, separated by commas."}
    first = client.chat.completions.create(model="", messages=[user], max_tokens=8, temperature=0)
    cut = first.choices[0].message.content
    assert first.choices[0].finish_reason == "length" and cut.strip()
    more = client.chat.completions.create(model="", messages=[user, {"role": "assistant", "content": cut}],
                                          max_tokens=8, temperature=0)
    assert more.choices[0].message.content
    # The continuation's prompt is the first prompt plus the cut reply: no end-of-turn (<|im_end|>\n,
    # two tokens) and no new assistant header between them.
    grown = more.usage.prompt_tokens - first.usage.prompt_tokens
    assert first.usage.completion_tokens - 1 <= grown <= first.usage.completion_tokens + 1
    r = httpx.post(app.url + "v1/chat/completions", json={"messages": [user, {"role": "assistant", "content": " "}]})
    assert r.status_code == 400 and "continued" in r.json()["error"]["message"]
