"""OpenAI-compatible request and response shapes (chat completions and completions).

Requests are validated with the same ranges as the UI (``SamplingOptions``); fields OpenAI clients
commonly send but FitChat cannot honour (``n`` > 1, tools, echo) are refused with a message,
harmless ones (``user``, ``stream_options``) accepted. ``presence_penalty``/``frequency_penalty``,
``response_format`` (json_object, json_schema) and llama.cpp's ``grammar`` become sampling options;
a backend that cannot honour them refuses the request (HTTP 400). ``logprobs``/``top_logprobs`` (chat)
and ``logprobs: N`` (completions) ask the backend for per-token log-probabilities, shaped here as OpenAI
shapes them.
"""
from __future__ import annotations

import codecs
import json
import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator,
                      model_validator)

from core.chat_history import MAX_MESSAGE_CHARS, MAX_MESSAGES, content_text
from core.generation import GenerationStats
from core.options import MAX_GRAMMAR_CHARS, SamplingOptions, describe_validation_error


class ApiRequestError(ValueError):
    """A request the API answers with HTTP 400 and this message."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = Field("", max_length=200)
    temperature: Optional[float] = Field(None, ge=0.0, le=5.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    max_tokens: Optional[int] = Field(None, ge=1, le=131072)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=131072)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 2)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    n: int = Field(1, ge=1, le=1)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    response_format: Optional[dict[str, Any]] = None
    grammar: Optional[str] = Field(None, max_length=MAX_GRAMMAR_CHARS)  # llama.cpp server's extension
    tools: Optional[list] = Field(None, max_length=0, description="not supported")
    # FitChat extensions, same names as its own options
    top_k: Optional[int] = Field(None, ge=0, le=1000)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repeat_penalty: Optional[float] = Field(None, ge=0.5, le=2.0)

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: Optional[dict]) -> Optional[dict]:
        if value is None:
            return value
        kind = value.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("response_format.type must be text, json_object or json_schema")
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ValueError("response_format json_schema needs json_schema.schema, a JSON Schema object")
        return value

    def json_schema(self) -> Optional[str]:
        """The JSON Schema the reply must match, as text (json_object: any JSON object)."""
        kind = (self.response_format or {}).get("type")
        if kind == "json_object":
            return json.dumps({"type": "object"})
        if kind == "json_schema":
            return json.dumps(self.response_format["json_schema"]["schema"])
        return None

    def logprob_count(self) -> Optional[int]:
        """None: no log-probabilities asked for; n: each token's and its n most likely alternatives'."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def sampling(self) -> SamplingOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        values = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                  "repeat_penalty": self.repeat_penalty, "seed": self.seed,
                  "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                  "grammar": self.grammar, "json_schema": self.json_schema(),
                  "max_tokens": self.max_completion_tokens or self.max_tokens, "stop": stop}
        try:
            return SamplingOptions(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise ApiRequestError(describe_validation_error(exc, "request")) from None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Union[str, list[dict[str, Any]], None] = None

    @model_validator(mode="after")
    def _text_only(self) -> "ChatMessageIn":
        if isinstance(self.content, list):
            for part in self.content:
                if part.get("type") not in (None, "text"):
                    raise ValueError(f"only text content is supported (got {part.get('type')!r})")
        return self


MAX_TOP_LOGPROBS = 20  # OpenAI's limit; backends.base checks the same


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def logprob_count(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> list[dict]:
        out = []
        for message in self.messages:
            text = content_text(message.content)
            if len(text) > MAX_MESSAGE_CHARS:
                raise ApiRequestError(f"a message is {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}")
            if "\x00" in text:
                raise ApiRequestError("a message contains a NUL character")
            out.append({"role": message.role, "content": text})
        # A trailing assistant message is continued (prefill), through the template without an
        # end-of-turn before the continuation (core.chat_template.render_prompt).
        if out[-1]["role"] == "assistant" and not out[-1]["content"].strip():
            raise ApiRequestError("a trailing assistant message is continued, so it must have text")
        return out


class CompletionRequest(_Request):
    prompt: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    echo: bool = Field(False, description="not supported")
    logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # the legacy form: how many top tokens

    def logprob_count(self) -> Optional[int]:
        return self.logprobs

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value


def parse_request(model: type[_Request], data: Any) -> _Request:
    if not isinstance(data, dict):
        raise ApiRequestError("the request body must be a JSON object")
    try:
        return model(**data)
    except ValidationError as exc:
        raise ApiRequestError(describe_validation_error(exc, "request")) from None


FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop", "error": "stop"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(stats: Optional[GenerationStats]) -> dict:
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.completion_tokens if stats else 0
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if stats and stats.reasoning_tokens:  # a leading <think> block, as OpenAI reports reasoning
        out["completion_tokens_details"] = {"reasoning_tokens": stats.reasoning_tokens}
    return out


def chat_response(request_id: str, model: str, text: str, stats: Optional[GenerationStats],
                  logprobs: Optional[dict] = None) -> dict:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": FINISH.get(stats.finish_reason, "stop") if stats else "stop"}],
            "usage": usage(stats)}


def chat_chunk(request_id: str, model: str, delta: dict, finish_reason: Optional[str] = None,
               usage_data: Optional[dict] = None, logprobs: Optional[dict] = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [choice] if usage_data is None else []}
    if usage_data is not None:
        chunk["usage"] = usage_data
    return chunk


def completion_response(request_id: str, model: str, text: str, stats: Optional[GenerationStats],
                        chunk: bool = False, logprobs: Optional[dict] = None) -> dict:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                         "finish_reason": (FINISH.get(stats.finish_reason, "stop") if stats else
                                           (None if chunk else "stop"))}],
            **({} if chunk else {"usage": usage(stats)})}


# Token entries are (token bytes, logprob, ((bytes, logprob), ...)) as the backend reports them
# (backends.base.TokenLogprob). A logprob is finite here: raw logits are; the floor only keeps JSON valid.
def _token_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _finite(logprob: float) -> float:
    return max(float(logprob), -9999.0)


def chat_logprobs(entries) -> dict:
    """OpenAI's ``choices[].logprobs`` of a chat completion (or of one streamed chunk)."""
    def one(raw: bytes, logprob: float) -> dict:
        return {"token": _token_text(raw), "logprob": _finite(logprob), "bytes": list(raw)}

    return {"content": [{**one(raw, logprob), "top_logprobs": [one(r, lp) for r, lp in top]}
                        for raw, logprob, top in entries], "refusal": None}


class CompletionLogprobs:
    """The legacy completions' ``logprobs`` (tokens, token_logprobs, top_logprobs, text_offset), chunk
    by chunk: ``text_offset`` counts characters from the start of the prompt, as OpenAI's does."""

    def __init__(self, prompt: str) -> None:
        self._offset = len(prompt)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def block(self, entries) -> dict:
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for raw, logprob, top in entries:
            out["tokens"].append(_token_text(raw))
            out["token_logprobs"].append(_finite(logprob))
            alternatives: dict = {}
            for r, lp in top:
                alternatives.setdefault(_token_text(r), _finite(lp))
            out["top_logprobs"].append(alternatives)
            out["text_offset"].append(self._offset)
            self._offset += len(self._decoder.decode(raw))
        return out


def error_body(message: str, kind: str = "invalid_request_error", code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
