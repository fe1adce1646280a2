"""Remote endpoints: validation (pure) and the owner-only store that keeps their keys."""
from __future__ import annotations

import json
import os
import stat

import pytest

from core.remote import (RemoteConfigError, RemoteProtocolError, context_overflow, make_endpoint, models_from_list,
                         normalise_base_url, parse_sse_line, redirect_allowed)
from services.remote_endpoints import RemoteEndpointStore


@pytest.mark.parametrize("given, expected", [
    ("http://gpu-box:8000", "http://gpu-box:8000/v1"),
    ("http://gpu-box:8000/v1/", "http://gpu-box:8000/v1"),
    ("HTTPS://Example.COM/openai/v1", "https://example.com/openai/v1"),
    (" http://127.0.0.1:11434/v1 ", "http://127.0.0.1:11434/v1"),
    ("http://[::1]:8080", "http://[::1]:8080/v1"),
])
def test_addresses_are_normalised_to_their_v1(given, expected):
    assert normalise_base_url(given) == expected


@pytest.mark.parametrize("bad, why", [
    ("ftp://box/v1", "only http:// and https://"),
    ("file:///etc/passwd", "only http:// and https://"),
    ("javascript:alert(1)", "only http:// and https://"),
    ("http://user:pw@box:8000/v1", "must not contain a user name or password"),
    ("http://box:99999/v1", "invalid port"),
    ("http://box/v1?key=abc", "query"),
    ("http://box/v1#x", "fragment"),
    ("http:///v1", "no valid host"),
    ("http://bo x/v1", "no spaces"),
    ("http://box/" + "a" * 400, "at most 300"),
    ("", "give the server's address"),
    (None, "give the server's address"),
])
def test_bad_addresses_are_refused_with_the_reason(bad, why):
    with pytest.raises(RemoteConfigError, match=why):
        normalise_base_url(bad)


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "x" * 41, "tab\there", None, 3])
def test_bad_names_are_refused(name):
    with pytest.raises(RemoteConfigError, match="endpoint name"):
        make_endpoint(name, "http://box:8000")


@pytest.mark.parametrize("key", ["has space", "x" * 513, "line\nbreak", "é"])
def test_bad_keys_are_refused(key):
    with pytest.raises(RemoteConfigError, match="API key"):
        make_endpoint("box", "http://box:8000", key)


def test_the_key_never_shows_in_repr_or_public_view():
    endpoint = make_endpoint("box", "http://box:8000", "sk-very-secret")
    assert "sk-very-secret" not in repr(endpoint)
    assert endpoint.public() == {"name": "box", "base_url": "http://box:8000/v1", "has_key": True}


@pytest.mark.parametrize("location, allowed", [
    ("/v1/models/", True), ("http://box:8000/other", True), ("https://box:8000/v1", False),
    ("http://box:8001/v1", False), ("http://evil.example/v1", False), ("//evil.example/v1", False), ("", False),
])
def test_redirects_only_to_the_same_origin(location, allowed):
    assert redirect_allowed("http://box:8000/v1/models", location) is allowed


def test_server_answers_are_read_or_named_as_not_conforming():
    assert models_from_list({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}) == ("a", "b")
    for bad in ([], {"data": "x"}, {"data": [{"name": "a"}]}):
        with pytest.raises(RemoteProtocolError):
            models_from_list(bad)
    chunk = parse_sse_line('data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}', chat=True)
    assert chunk.text == "Hi" and chunk.finish_reason is None
    usage = parse_sse_line('data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}', chat=True)
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 4)
    assert parse_sse_line("data: [DONE]", chat=True).finish_reason == "[DONE]"
    assert parse_sse_line(": ping", chat=True) is None
    for bad in ("data: {not json", 'data: {"choices": 3}', 'data: {"error": {"message": "boom"}}',
                'data: {"choices":[{"text": 5}]}'):
        with pytest.raises(RemoteProtocolError):
            parse_sse_line(bad, chat=False)


@pytest.mark.parametrize("message, n_ctx", [
    ("This model's maximum context length is 1024 tokens. However, you requested 3039", 1024),
    ("Requested tokens (3003) exceed context window of 2048", 2048),
    ("The conversation is longer than the model's context holds (4096 tokens)", None),
    ("something else", None),
])
def test_context_overflow_messages(message, n_ctx):
    assert context_overflow(message) == n_ctx


def test_store_is_owner_only_and_lists_no_keys(tmp_path):
    store = RemoteEndpointStore(tmp_path)
    store.add("box", "http://box:8000", "sk-secret-1")
    store.add("ollama", "http://127.0.0.1:11434")
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode == 0o600
    assert "sk-secret" not in json.dumps(store.list())
    assert store.list() == [{"name": "box", "base_url": "http://box:8000/v1", "has_key": True},
                            {"name": "ollama", "base_url": "http://127.0.0.1:11434/v1", "has_key": False}]
    assert store.get("box").api_key == "sk-secret-1"
    with pytest.raises(RemoteConfigError, match="exists already"):
        store.add("box", "http://other:1")
    assert store.remove("box") and not store.remove("box")
    assert store.names() == ["ollama"] and stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["remote_endpoints.json"]  # no temp file left


def test_a_tampered_store_is_refused_not_trusted(tmp_path):
    store = RemoteEndpointStore(tmp_path)
    for body in ('{"endpoints": [{"name": "x", "base_url": "file:///etc"}]}',
                 '{"endpoints": [], "extra": 1}', '{"endpoints": [{"name": "x", "base_url": "http://a", "cmd": 1}]}',
                 "not json"):
        store.path.write_text(body)
        with pytest.raises(RemoteConfigError, match="not a valid endpoint list"):
            store.list()


@pytest.mark.parametrize("argv, why", [
    (["--remote", "ftp://box/v1"], "--remote: only http:// and https://"),
    (["--remote", "http://u:p@box/v1"], "--remote: the address must not contain a user name or password"),
    (["--remote-model", "m"], "--remote-model needs --remote URL"),
    (["--remote", "http://box", "--model", "x.gguf"], "either --model or --remote"),
])
def test_cli_remote_flags_are_checked(argv, why, tmp_path):
    from cli.args import UsageError
    from cli.serve import settings_from_args

    with pytest.raises(UsageError, match=why.replace("(", "\\(")):
        settings_from_args(argv + ["--data-dir", str(tmp_path)])


def test_cli_remote_key_comes_from_a_file_and_stays_out_of_repr(tmp_path):
    from cli.serve import settings_from_args

    key_file = tmp_path / "k"
    key_file.write_text("sk-from-file\n")
    settings = settings_from_args(["--remote", "http://box:8000", "--remote-key-file", str(key_file),
                                   "--remote-model", "qwen", "--data-dir", str(tmp_path)])
    endpoint, model = settings.remote
    assert (endpoint.base_url, endpoint.api_key, model) == ("http://box:8000/v1", "sk-from-file", "qwen")
    assert "sk-from-file" not in repr(settings)
