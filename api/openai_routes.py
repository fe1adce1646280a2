"""OpenAI-compatible API on the app's own server: ``GET /v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions`` (streamed as server-sent events, or whole, with usage and
finish_reason). Same model manager, queue and option ranges as the UI.

Keys: ``Authorization: Bearer KEY``. On loopback without configured keys the API is open; bound
beyond loopback it always needs a key (and answers 401 to everyone when none is configured).
"""
from __future__ import annotations

import hmac
import json
import threading
from typing import AsyncIterator, Callable, Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import (BackendError, ChatStream, NotLoadedError, PromptTooLongError, TemplateError,
                           UnsupportedRequestError)
from backends.turns import BusyError
from core.openai_schema import (ApiRequestError, ChatCompletionRequest, CompletionLogprobs, CompletionRequest,
                                chat_chunk, chat_logprobs, chat_response, completion_response, error_body, new_id,
                                parse_request, usage, FINISH)

MAX_BODY_BYTES = 4 * 1024 * 1024


class ApiSettings:
    def __init__(self, keys: tuple[str, ...], beyond_loopback: bool, throttle=None) -> None:
        self.keys = keys
        self.beyond_loopback = beyond_loopback
        self.throttle = throttle  # cli.login_guard.SharedThrottle: wrong keys are slowed per address

    def authorised(self, header: Optional[str]) -> bool:
        if not self.keys:
            return not self.beyond_loopback
        token = (header or "").removeprefix("Bearer ").strip()
        ok = False
        for key in self.keys:  # compare with every key: the time taken reveals nothing
            ok = hmac.compare_digest(key.encode(), token.encode()) or ok
        return ok


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: Optional[dict] = None):
    return JSONResponse(error_body(message, kind), status_code=status, headers=headers)


def _backend_error(exc: BackendError) -> JSONResponse:
    """Errors that are the request's fault (longer than the context, refused by the template) are 400s."""
    if isinstance(exc, (PromptTooLongError, TemplateError, UnsupportedRequestError)):
        return _error(400, str(exc))
    return _error(500, str(exc), "server_error")


class _BodyTooLarge(ApiRequestError):
    pass


async def _read_capped(request: Request) -> bytes:
    """The body, refused by its declared ``Content-Length`` before any of it is read, and read
    with a cap otherwise (chunked bodies), so a huge body never sits in memory."""
    too_large = _BodyTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiRequestError("the Content-Length header is not a number")
        if int(declared) > MAX_BODY_BYTES:
            raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_large
    return bytes(raw)


async def _body(request: Request) -> dict:
    raw = await _read_capped(request)
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ApiRequestError("the request body is not valid JSON") from None
    except RecursionError:
        raise ApiRequestError("the request body is nested too deeply") from None


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def install(app: FastAPI, manager, settings: ApiSettings) -> None:
    """Add the /v1 routes to ``app`` (the Gradio server's FastAPI app)."""

    def model_name() -> str:
        state = manager.state()
        return state.info.name if state.info else ""

    def guard(request: Request) -> Optional[JSONResponse]:
        throttle = settings.throttle if settings.keys else None
        address = request.client.host if request.client else "unknown"
        if throttle is not None and (wait := throttle.wait_s(address, "")) > 0:
            seconds = max(1, int(wait + 0.999))
            return _error(429, f"too many wrong API keys from this address: try again in {seconds} s",
                          "rate_limit_error", headers={"Retry-After": str(seconds)})
        if not settings.authorised(request.headers.get("authorization")):
            if throttle is not None and request.headers.get("authorization"):  # a key was tried
                throttle.failed(address, "", "API key check")
            message = ("a valid API key is required (Authorization: Bearer KEY)" if settings.keys else
                       "the API needs a key when the app serves beyond this machine: start with --api-key")
            return _error(401, message, "authentication_error")
        if throttle is not None:
            throttle.succeeded(address, "")
        return None

    @app.get("/v1/models")
    async def list_models(request: Request):
        if (denied := guard(request)) is not None:
            return denied
        name = model_name()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fitchat"}] if name else []
        return {"object": "list", "data": data}

    async def run(request: Request, parse: Callable, start: Callable[..., ChatStream], shape: str):
        if (denied := guard(request)) is not None:
            return denied
        try:
            body = parse(await _body(request))
            sampling = body.sampling()
        except ApiRequestError as exc:
            return _error(413 if isinstance(exc, _BodyTooLarge) else 400, str(exc))
        loaded = model_name()
        if body.model and loaded and body.model != loaded:
            return _error(404, f"The model {body.model!r} does not exist here; the loaded model is {loaded!r} "
                               "(or leave model empty).")
        cancel = threading.Event()
        try:
            stream = await _while_connected(request, cancel, lambda: start(body, sampling, cancel))
        except ApiRequestError as exc:  # found while turning the body into messages
            return _error(400, str(exc))
        except BusyError as exc:
            return _error(503, str(exc), "server_busy", headers={"Retry-After": str(max(1, exc.retry_after_s))})
        except NotLoadedError as exc:
            return _error(503, str(exc), "model_not_loaded", headers={"Retry-After": "5"})
        except BackendError as exc:
            return _error(400, str(exc))
        request_id, model = new_id("chatcmpl" if shape == "chat" else "cmpl"), model_name()
        if body.stream:
            # The first piece is read before the headers go out, so a request the backend refuses at
            # its start (a bad grammar, a prompt longer than the context) is a plain HTTP error.
            try:
                first = await _while_connected(request, cancel, lambda: next(stream, None))
            except BackendError as exc:
                await anyio.to_thread.run_sync(stream.close)
                return _backend_error(exc)
            return StreamingResponse(_stream(request, stream, cancel, request_id, model, shape, body.include_usage,
                                             first, _logprob_shaper(body, shape)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            text = await _collect(request, stream, cancel)
        except BackendError as exc:
            return _backend_error(exc)
        build = chat_response if shape == "chat" else completion_response
        shaper = _logprob_shaper(body, shape)
        return build(request_id, model, text, stream.stats,
                     logprobs=shaper(stream.logprobs.take()) if shaper is not None else None)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, lambda data: parse_request(ChatCompletionRequest, data),
                         lambda body, sampling, cancel: manager.stream_chat(body.chat_messages(), sampling, cancel,
                                                                            logprobs=body.logprob_count()),
                         "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, lambda data: parse_request(CompletionRequest, data),
                         lambda body, sampling, cancel: manager.stream_chat(body.prompt, sampling, cancel,
                                                                            logprobs=body.logprob_count()),
                         "text")


def _logprob_shaper(body, shape: str) -> Optional[Callable[[list], dict]]:
    """What turns a reply's token entries into the response's ``logprobs`` (None: not asked for)."""
    if body.logprob_count() is None:
        return None
    return chat_logprobs if shape == "chat" else CompletionLogprobs(body.prompt).block


_DISCONNECT_POLL_S = 0.25


async def _while_connected(request: Request, cancel: threading.Event, work: Callable[[], object]):
    """Run ``work`` in a thread; when the client goes meanwhile, set ``cancel`` (a reply waiting in
    line or generating then stops). Starlette does not cancel a plain handler on disconnect, so a
    watcher polls for it."""
    async def watch() -> None:
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await anyio.sleep(_DISCONNECT_POLL_S)

    outcome: dict = {}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        try:
            outcome["value"] = await anyio.to_thread.run_sync(work)
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group's wrapping
            outcome["error"] = exc
        finally:
            tasks.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def _collect(request: Request, stream: ChatStream, cancel: threading.Event) -> str:
    """A whole (non-streamed) reply; generation stops as soon as its client has gone."""
    try:
        return await _while_connected(request, cancel, lambda: "".join(stream))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)


async def _stream(request: Request, stream: ChatStream, cancel: threading.Event, request_id: str, model: str,
                  shape: str, include_usage: bool, first: Optional[str] = None,
                  shaper: Optional[Callable[[list], dict]] = None) -> AsyncIterator[bytes]:
    done = object()
    pending = first

    def logprobs() -> Optional[dict]:  # the entries of the text read so far (the producer adds them first)
        return shaper(stream.logprobs.take()) if shaper is not None else None

    try:
        if shape == "chat":
            yield _sse(chat_chunk(request_id, model, {"role": "assistant", "content": ""}))
        while True:
            if await request.is_disconnected():
                cancel.set()
                break
            try:
                if pending is not None:
                    delta, pending = pending, None
                else:
                    delta = await anyio.to_thread.run_sync(lambda: next(stream, done))
            except BackendError as exc:
                yield _sse(error_body(str(exc), "server_error"))
                break
            if delta is done:
                finish = FINISH.get(stream.stats.finish_reason, "stop") if stream.stats else "stop"
                rest = logprobs()  # entries that came after the last text (a token cut by a stop string)
                if rest is not None and (rest.get("content") or rest.get("tokens")):
                    yield _sse(chat_chunk(request_id, model, {"content": ""}, logprobs=rest) if shape == "chat"
                               else completion_response(request_id, model, "", None, chunk=True, logprobs=rest))
                if shape == "chat":
                    yield _sse(chat_chunk(request_id, model, {}, finish))
                    if include_usage:
                        yield _sse(chat_chunk(request_id, model, {}, usage_data=usage(stream.stats)))
                else:
                    yield _sse(completion_response(request_id, model, "", stream.stats, chunk=True))
                yield _sse("[DONE]")
                break
            if shape == "chat":
                yield _sse(chat_chunk(request_id, model, {"content": delta}, logprobs=logprobs()))
            else:
                yield _sse(completion_response(request_id, model, delta, None, chunk=True, logprobs=logprobs()))
    finally:
        # Also reached when the client disconnects (the response task is cancelled): stop the
        # generation and release the model, shielded so that the cancellation cannot skip it.
        cancel.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)
