"""Issue 12's API options with the official ``openai`` client against the running app (embedded
model): presence/frequency penalties, JSON mode and JSON schema (the reply parses and matches),
llama.cpp grammars, clear 400s for what cannot be honoured, and a 404 for an unknown model."""
from __future__ import annotations

import json

import openai
import pytest

from backends.base import UnsupportedRequestError, refuse_unsupported_sampling
from core.openai_schema import ApiRequestError, ChatCompletionRequest, parse_request
from core.options import SamplingOptions

pytestmark = pytest.mark.real_model
ASK = [{"role": "user", "content": "Describe a cat named Tom who is 3 years old."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=app.url + "v1", api_key="unused-on-loopback", max_retries=0)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_json_schema_reply_parses_and_matches(client, model):
    reply = client.chat.completions.create(
        model=model, messages=ASK, max_tokens=80, temperature=0, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": PERSON}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["name"], str) and isinstance(data["age"], int)


def test_json_object_mode_streamed(client, model):
    chunks = client.chat.completions.create(model=model, messages=ASK, max_tokens=80, temperature=0.7, seed=2,
                                            response_format={"type": "json_object"}, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)


def test_penalties_reach_the_sampler(client, model):
    ask = [{"role": "user", "content": "Repeat the word 'apple' twenty times."}]
    plain = client.chat.completions.create(model=model, messages=ask, max_tokens=40, temperature=0)
    penalised = client.chat.completions.create(model=model, messages=ask, max_tokens=40, temperature=0,
                                               presence_penalty=2.0, frequency_penalty=2.0)
    count = lambda text: text.lower().count("apple")  # noqa: E731
    assert count(penalised.choices[0].message.content) < count(plain.choices[0].message.content), (
        plain.choices[0].message.content, penalised.choices[0].message.content)


def test_a_grammar_restricts_the_reply_and_a_bad_one_is_a_400(client, model):
    reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=10, temperature=1.0,
                                           extra_body={"grammar": 'root ::= ("yes" | "no")'})
    assert reply.choices[0].message.content in ("yes", "no")
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="grammar could not be parsed"):
            client.chat.completions.create(model=model, messages=ASK, max_tokens=10, stream=stream,
                                           extra_body={"grammar": "root ::= ( unclosed"})


def test_unknown_model_is_a_404_naming_the_loaded_one(client, model):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=4)
    assert model in str(err.value) and "gpt-4o" in str(err.value)


@pytest.mark.parametrize("body,message", [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}, "not both"),
])
def test_bad_sampling_requests_are_refused(body, message):
    with pytest.raises(ApiRequestError, match=message):
        parse_request(ChatCompletionRequest, {"messages": ASK, **body}).sampling()


def test_backends_without_llama_cpp_samplers_refuse_instead_of_ignoring():
    refuse_unsupported_sampling(SamplingOptions(), "the transformers backend")  # nothing asked: fine
    for asked in (dict(grammar='root ::= "a"'), dict(json_schema='{"type": "object"}'), dict(presence_penalty=1.0)):
        with pytest.raises(UnsupportedRequestError, match="cannot be honoured by the transformers backend"):
            refuse_unsupported_sampling(SamplingOptions(**asked), "the transformers backend")
