"""Remote OpenAI-compatible engines (vLLM, llama-server, Ollama, another FitChat): the pure half.

Endpoint validation (names, http/https URLs without credentials), the redirect rule, and the
reading of the server's replies (model lists, streamed chunks, error bodies). No network, no files.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

MAX_ENDPOINTS = 32
MAX_URL_LENGTH = 300
MAX_KEY_LENGTH = 512
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: it goes into an HTTP header
_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]+$")


class RemoteConfigError(ValueError):
    """An endpoint that cannot be used as given; the message says why."""


class RemoteProtocolError(ValueError):
    """The server answered, but not the way an OpenAI-compatible server does."""


@dataclass(frozen=True)
class RemoteEndpoint:
    name: str
    base_url: str                    # normalised: scheme://host[:port][/prefix]/v1
    api_key: Optional[str] = field(default=None, repr=False)

    def public(self) -> dict:
        """What may be shown or sent to a browser: never the key itself."""
        return {"name": self.name, "base_url": self.base_url, "has_key": bool(self.api_key)}

    @property
    def origin(self) -> str:
        return origin(self.base_url)


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise RemoteConfigError("an endpoint name is 1-40 letters, digits, '.', '_' or '-', starting with a "
                                "letter or digit")
    return name.strip()


def normalise_base_url(url: object) -> str:
    """``http(s)://host[:port][/prefix]`` with or without a trailing ``/v1`` -> ``.../v1``.

    Only http and https; no user:password in the URL (keys go in the key field, which is stored
    apart and never shown); no query or fragment."""
    if not isinstance(url, str) or not url.strip():
        raise RemoteConfigError("give the server's address, e.g. http://gpu-box:8000/v1")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise RemoteConfigError(f"the address must be at most {MAX_URL_LENGTH} characters with no spaces")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise RemoteConfigError(f"only http:// and https:// addresses are allowed (got {parts.scheme or 'none'!r})")
    if "@" in parts.netloc:
        raise RemoteConfigError("the address must not contain a user name or password: put an API key in the "
                                "key field instead")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise RemoteConfigError("the address has an invalid port") from None
    if not host or not _HOST.match(host):
        raise RemoteConfigError("the address has no valid host name")
    if parts.query or parts.fragment:
        raise RemoteConfigError("the address must not have a query (?...) or fragment (#...)")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme.lower(), netloc.lower(), path, "", ""))


def validate_key(key: object) -> Optional[str]:
    if key is None or key == "":
        return None
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise RemoteConfigError(f"an API key is 1-{MAX_KEY_LENGTH} printable characters without spaces")
    return key


def make_endpoint(name: object, url: object, key: object = None) -> RemoteEndpoint:
    return RemoteEndpoint(validate_name(name), normalise_base_url(url), validate_key(key))


def origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def redirect_allowed(from_url: str, location: str) -> bool:
    """A redirect is followed only to the same scheme, host and port: a key is never sent elsewhere."""
    if not location:
        return False
    target = urlsplit(location)
    if not target.scheme and not target.netloc:
        return True  # a relative path on the same server
    return origin(location) == origin(from_url)


def models_from_list(data: object) -> tuple[str, ...]:
    """The model ids of a ``GET /v1/models`` answer."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RemoteProtocolError("its /v1/models answer has no 'data' list")
    ids = []
    for item in data["data"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise RemoteProtocolError("its /v1/models answer lists a model without an id")
        ids.append(item["id"][:200])
    return tuple(ids)


def context_from_list(data: dict, model: str) -> Optional[int]:
    """The model's context length when the server tells it (vLLM's ``max_model_len``)."""
    for item in data.get("data", ()):
        if isinstance(item, dict) and item.get("id") == model:
            for key in ("max_model_len", "context_length", "n_ctx"):
                value = item.get(key)
                if isinstance(value, int) and value > 0:
                    return value
    return None


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    finish_reason: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None


def parse_sse_line(line: str, chat: bool) -> Optional[Chunk]:
    """One line of a streamed answer. None for lines that carry nothing (comments, blanks, pings);
    ``Chunk(finish_reason="[DONE]")`` for the end marker."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return Chunk(finish_reason="[DONE]")
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        raise RemoteProtocolError(f"a streamed event is not JSON: {payload[:80]!r}") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError("a streamed event is not a JSON object")
    if "error" in data:
        raise RemoteProtocolError(f"it reported an error mid-reply: {error_message(data)}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise RemoteProtocolError("a streamed event has no 'choices' list")
    text, finish = "", None
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise RemoteProtocolError("a streamed choice is not an object")
        if chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise RemoteProtocolError("a streamed choice's text is not a string")
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    return Chunk(text or "", finish, prompt if isinstance(prompt, int) else None,
                 completion if isinstance(completion, int) else None)


def error_message(body: object) -> str:
    """The human part of an error answer (OpenAI's ``{"error": {"message"}}``, FastAPI's ``detail``)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:300]
        if isinstance(error, str):
            return error[:300]
        if isinstance(body.get("message"), str):
            return body["message"][:300]
        if "detail" in body:
            return str(body["detail"])[:300]
    if isinstance(body, str):
        return body.strip()[:300]
    return ""


_CONTEXT_PATTERNS = (re.compile(r"context window of (\d+)"), re.compile(r"maximum context length is (\d+)"),
                     re.compile(r"context (?:holds|size|length)(?: of| is)? (\d+)"))


def context_overflow(message: str) -> Optional[int]:
    """The context size named by a 'prompt too long' error (llama-cpp-python, vLLM, FitChat), else None."""
    for pattern in _CONTEXT_PATTERNS:
        match = pattern.search(message)
        if match:
            return int(match.group(1))
    return None


FINISH_REASONS = {"stop": "stop", "length": "length", "eos": "stop", "abort": "cancelled"}


def finish_reason(server_value: Optional[str]) -> str:
    return FINISH_REASONS.get(server_value or "", "stop")
