import dataclasses
import math

import pytest

from core.generation import GenerationStats
from core.openai_schema import (ApiRequestError, ChatCompletionRequest, CompletionRequest, chat_chunk, chat_response,
                                parse_request)

STATS = GenerationStats(12, 5, 0.1, 50.0, 0.3, 2048, "length")


def test_chat_request_maps_to_sampling_and_messages():
    req = parse_request(ChatCompletionRequest, {
        "model": "x", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "temperature": 0.2, "max_tokens": 7, "stop": "END", "seed": 3, "stream": True,
        "stream_options": {"include_usage": True}, "user": "ignored-field"})
    sampling = req.sampling()
    assert (sampling.temperature, sampling.max_tokens, sampling.stop, sampling.seed) == (0.2, 7, ("END",), 3)
    assert req.chat_messages() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert req.stream and req.include_usage


@pytest.mark.parametrize("body,message", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": math.nan}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10 ** 9}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": 2}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs needs logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "only text"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 9}, "stop"),
    ([1, 2], "JSON object"),
])
def test_bad_chat_requests(body, message):
    with pytest.raises(ApiRequestError, match=message):
        parse_request(ChatCompletionRequest, body).sampling()


def test_a_trailing_assistant_message_is_kept_to_be_continued_but_not_empty():
    req = parse_request(ChatCompletionRequest, {"messages": [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello, I"}]})
    assert req.chat_messages()[-1] == {"role": "assistant", "content": "Hello, I"}
    req = parse_request(ChatCompletionRequest, {"messages": [{"role": "assistant", "content": "  "}]})
    with pytest.raises(ApiRequestError, match="continued, so it must have text"):
        req.chat_messages()


def test_completion_request():
    req = parse_request(CompletionRequest, {"prompt": "Once upon", "max_tokens": 5})
    assert req.prompt == "Once upon" and req.sampling().max_tokens == 5
    with pytest.raises(ApiRequestError, match="echo"):
        parse_request(CompletionRequest, {"prompt": "x", "echo": True})


def test_response_shapes():
    body = chat_response("id1", "m", "hello", STATS)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    thought = chat_response("id1", "m", "<think>x</think>hi", dataclasses.replace(STATS, reasoning_tokens=4))
    assert thought["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}
    chunk = chat_chunk("id1", "m", {"content": "he"})
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["delta"] == {"content": "he"}
    assert chat_chunk("id1", "m", {}, usage_data={"total_tokens": 1})["choices"] == []
