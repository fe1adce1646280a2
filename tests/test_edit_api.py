"""The /edit API endpoint through gradio_client against the running app: one call edits a message
(the browser asks first; an API caller has already decided), refusals come back as errors."""
from __future__ import annotations

import pytest

from core.options import SamplingOptions
from tests.conftest import start_app

pytestmark = pytest.mark.real_model

SAMPLING = {**SamplingOptions().model_dump(), "stop": "", "seed": None, "max_tokens": 4}


def sampling() -> list:
    return [SAMPLING[k] for k in SamplingOptions.model_fields]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = start_app(["--ctx", "1024"], tmp_path_factory.mktemp("edit-api"))
    try:
        app.wait_model_ready()
        yield app.client()
    finally:
        app.stop()


def users(chat) -> list[str]:
    return [m["content"] if isinstance(m["content"], str) else str(m["content"]) for m in chat if m["role"] == "user"]


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(text_of(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", content.get("value", "")))
    return str(content)


def test_one_call_to_edit_edits_the_message_and_drops_the_later_turns(client):
    client.predict(api_name="/new_chat")
    for text in ("First question.", "Second question."):
        chat, _ = client.predict(text, "", *sampling(), api_name="/send")
    assert [text_of(m["content"]) for m in chat if m["role"] == "user"] == ["First question.", "Second question."]
    chat = client.predict(0, "First question, edited.", "", *sampling(), api_name="/edit")
    assert [text_of(m["content"]) for m in chat if m["role"] == "user"] == ["First question, edited."]
    assert [m["role"] for m in chat] == ["user", "assistant"]  # a new reply to the edited message
    # the session's chat is the edited one: the next send continues it
    chat, _ = client.predict("Third.", "", *sampling(), api_name="/send")
    assert [text_of(m["content"]) for m in chat if m["role"] == "user"] == ["First question, edited.", "Third."]


@pytest.mark.parametrize("index, text, said", [
    (1, "x", "Only your own messages can be edited"),
    (9, "x", "no longer in the chat"),
    (0, "   ", "Type a message first"),
])
def test_a_bad_edit_is_refused_with_a_clear_message(client, index, text, said):
    client.predict(api_name="/new_chat")
    client.predict("Hello.", "", *sampling(), api_name="/send")
    with pytest.raises(Exception, match=said):
        client.predict(index, text, "", *sampling(), api_name="/edit")
