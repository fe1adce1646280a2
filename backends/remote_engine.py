"""A Backend over a remote OpenAI-compatible server (vLLM, llama-server, Ollama, another FitChat).

``load`` checks that the endpoint serves the model (``GET /v1/models``); ``stream_chat`` streams
``POST /v1/chat/completions`` (or ``/v1/completions`` for a raw prompt). Stop shuts the HTTP
connection down, which is how these servers notice a client has gone and free its slot. Speed and
time to first token are measured here, on the clock of the user; token counts come from the
server's ``usage`` when it sends one. Every failure is one BackendError with a plain message; the
backend stays usable, so a retry works once the server is back.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable, Generator, Optional
from urllib.parse import urljoin

import httpx

from backends.base import (BackendError, ChatStream, LoadSpec, ModelInfo, ModelLoadError, NotLoadedError,
                           PromptTooLongError, refuse_logprobs)
from core.generation import (GenerationProgress, GenerationStats, ReasoningCounter, StopMatcher,
                             decode_tokens_per_s)
from core.options import RemoteLoadOptions, SamplingOptions
from core.remote import (RemoteEndpoint, RemoteProtocolError, context_from_list, context_overflow, error_message,
                         finish_reason, models_from_list, origin, parse_sse_line, redirect_allowed)

CONNECT_TIMEOUT_S = 5.0
LIST_TIMEOUT_S = 15.0
MAX_REDIRECTS = 3
_CANCEL_POLL_S = 0.05


class RemoteHealth:
    """What the Resources tab shows for a remote engine instead of a local placement: replies and
    errors counted here, the last measured speed and the last error. Shared by the app's backends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.replies = 0
        self.errors = 0
        self.last_stats: Optional[GenerationStats] = None
        self.last_error: Optional[str] = None
        self.last_error_at: Optional[float] = None  # time.time()

    def reply(self, stats: GenerationStats) -> None:
        with self._lock:
            self.replies += 1
            self.last_stats = stats

    def error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error, self.last_error_at = message, time.time()


class RemoteBackend:
    """Backend protocol over HTTP. ``endpoints`` resolves a name to its endpoint (with the key)."""

    name = "remote"

    def __init__(self, endpoints: Callable[[str], Optional[RemoteEndpoint]],
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, health: Optional[RemoteHealth] = None) -> None:
        self.health = health or RemoteHealth()
        self._endpoints = endpoints
        self._connect_timeout_s = connect_timeout_s
        # No proxies from the environment: the key goes to the address the admin typed, nowhere else.
        self._client = httpx.Client(follow_redirects=False, trust_env=False)
        self._gen_lock = threading.Lock()
        self._info: Optional[ModelInfo] = None
        self._endpoint: Optional[RemoteEndpoint] = None
        self._options = RemoteLoadOptions()
        self._model = ""

    @property
    def info(self) -> Optional[ModelInfo]:
        return self._info

    # -- HTTP helpers ----------------------------------------------------------------------
    def _label(self, endpoint: RemoteEndpoint, start: bool = False) -> str:
        return f"{'The' if start else 'the'} remote engine {endpoint.name!r} ({endpoint.origin})"

    def _send(self, endpoint: RemoteEndpoint, method: str, path: str, body: Optional[dict],
              read_timeout_s: float, stream: bool) -> httpx.Response:
        """One request; redirects followed only on the same scheme, host and port."""
        url = endpoint.base_url + path
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        timeout = httpx.Timeout(self._connect_timeout_s, read=read_timeout_s)
        for _ in range(MAX_REDIRECTS + 1):
            request = self._client.build_request(method, url, json=body, headers=headers, timeout=timeout)
            try:
                response = self._client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise self._transport_error(endpoint, exc, read_timeout_s) from None
            if not response.is_redirect:
                return response
            location = response.headers.get("location", "")
            response.close()
            if not redirect_allowed(url, location):
                where = origin(urljoin(url, location)) if location else "nowhere"
                raise BackendError(f"{self._label(endpoint, True)} redirected the request to {where}. FitChat does not "
                                   "follow redirects to another host (the API key would go with it): change the "
                                   "endpoint's address to the server that answers.")
            url = urljoin(url, location)
        raise BackendError(f"{self._label(endpoint, True)} redirected more than {MAX_REDIRECTS} times; check its address.")

    def _transport_error(self, endpoint: RemoteEndpoint, exc: Exception, read_timeout_s: float) -> BackendError:
        label = self._label(endpoint)
        if isinstance(exc, httpx.ConnectTimeout):
            return BackendError(f"Cannot reach {label}: no answer to the connection within "
                                f"{self._connect_timeout_s:g} s. Check the address and that it is running, then retry.")
        if isinstance(exc, httpx.ConnectError):
            return BackendError(f"Cannot reach {label}: {_reason(exc)}. Check that the server is running and the "
                                "address is right, then retry.")
        if isinstance(exc, httpx.TimeoutException):
            return BackendError(f"{self._label(endpoint, True)} sent nothing for {read_timeout_s:g} s (timeout). It may be overloaded; "
                                "retry, or raise the endpoint's reply timeout.")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return BackendError(f"The connection to {label} was cut mid-reply ({_reason(exc)}). The text so far is "
                                "kept; retry once the server is back.")
        return BackendError(f"Talking to {label} failed: {_reason(exc)}.")

    def _status_error(self, endpoint: RemoteEndpoint, response: httpx.Response, model: str,
                      loading: bool) -> BackendError:
        try:
            raw = response.read()[:20000].decode("utf-8", errors="replace")
        except httpx.HTTPError:
            raw = ""
        finally:
            response.close()
        try:
            message = error_message(json.loads(raw))
        except json.JSONDecodeError:
            message = error_message(raw)
        detail = f" The server said: {message}" if message else ""
        label, code = self._label(endpoint, True), response.status_code
        error = ModelLoadError if loading else BackendError
        if code in (401, 403):
            key = "its API key" if endpoint.api_key else "a request without an API key"
            return error(f"{label} refused {key} (HTTP {code}). An admin can set the right key by adding the "
                         f"endpoint again.{detail}")
        if code == 404:
            return error(f"{label} does not serve {model!r} at {endpoint.base_url} (HTTP 404): the model may have "
                         f"been removed, or the address is not an OpenAI-compatible /v1.{detail}")
        n_ctx = context_overflow(message) if code == 400 else None
        if n_ctx is not None:
            return PromptTooLongError(f"The conversation is longer than the remote model's context holds {n_ctx} "
                                      f"tokens): start a new chat or shorten it.{detail}")
        if code == 503 or code >= 500:
            return error(f"{label} could not answer (HTTP {code}); retry in a moment.{detail}")
        return error(f"{label} refused the request (HTTP {code}).{detail}")

    # -- Backend protocol ------------------------------------------------------------------
    def load(self, spec: LoadSpec) -> ModelInfo:
        options = spec.options if isinstance(spec.options, RemoteLoadOptions) else RemoteLoadOptions()
        if not options.endpoint:
            raise ModelLoadError("Pick a remote endpoint to load a remote model from.")
        endpoint = self._endpoints(options.endpoint)
        if endpoint is None:
            raise ModelLoadError(f"There is no remote endpoint named {options.endpoint!r} (an admin adds them in "
                                 "the Models tab).")
        started = time.monotonic()
        with self._gen_lock:
            self._info = None
            try:
                response = self._send(endpoint, "GET", "/models", None, LIST_TIMEOUT_S, stream=False)
            except BackendError as exc:
                self.health.error(str(exc))
                raise ModelLoadError(str(exc)) from None
            if response.status_code != 200:
                raise self._status_error(endpoint, response, spec.model_path, loading=True)
            try:
                data = response.json()
                models = models_from_list(data)
            except (json.JSONDecodeError, RemoteProtocolError) as exc:
                raise ModelLoadError(f"{self._label(endpoint, True)} is not an OpenAI-compatible server: "
                                     f"{exc if isinstance(exc, RemoteProtocolError) else 'its /v1/models is not JSON'}."
                                     ) from None
            model = spec.model_path or (models[0] if models else "")
            if model not in models:
                listed = ", ".join(models[:10]) or "no models"
                raise ModelLoadError(f"{self._label(endpoint, True)} does not serve {model!r} (it lists: {listed}).")
            n_ctx = options.n_ctx or context_from_list(data, model) or 0
            self._endpoint, self._options = endpoint, options
            self._info = ModelInfo(
                name=spec.display_name or model, path=f"{endpoint.name}:{model}", backend=self.name, n_ctx=n_ctx,
                n_ctx_train=n_ctx, n_layer=0, n_gpu_layers=0, gpu_offload_supported=False, n_threads=0,
                kv_type="", flash_attn=False, template_origin="server",
                load_seconds=time.monotonic() - started, file_bytes=0)
            self._model = model
            return self._info

    def unload(self) -> None:
        with self._gen_lock:
            self._info = None
            self._endpoint = None

    def close(self) -> None:
        self.unload()
        self._client.close()

    def list_models(self, endpoint: RemoteEndpoint) -> tuple[str, ...]:
        """The models ``endpoint`` serves (for the Models tab); BackendError when it cannot say."""
        response = self._send(endpoint, "GET", "/models", None, LIST_TIMEOUT_S, stream=False)
        if response.status_code != 200:
            raise self._status_error(endpoint, response, "", loading=False)
        try:
            return models_from_list(response.json())
        except (json.JSONDecodeError, RemoteProtocolError) as exc:
            raise BackendError(f"{self._label(endpoint, True)} is not an OpenAI-compatible server: "
                               f"{exc if isinstance(exc, RemoteProtocolError) else 'not JSON'}.") from None

    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions,
                    cancel: threading.Event, logprobs: Optional[int] = None) -> ChatStream:
        info, endpoint = self._info, self._endpoint
        if info is None or endpoint is None:
            raise NotLoadedError("No model is loaded.")
        # Not passed through: remote servers differ in whether and how they report them, and FitChat's
        # own stop strings cut the text, so their entries could not be kept in step with it.
        refuse_logprobs(logprobs, "a remote engine")
        progress = GenerationProgress(started=time.monotonic(), n_ctx=info.n_ctx)
        return ChatStream(self._recorded(self._stream(endpoint, self._model, messages, params, cancel, progress)),
                          progress)

    def _recorded(self, stream: Generator[str, None, GenerationStats]) -> Generator[str, None, GenerationStats]:
        try:
            stats = yield from stream
        except BackendError as exc:
            self.health.error(str(exc))
            raise
        self.health.reply(stats)
        return stats

    def _stream(self, endpoint: RemoteEndpoint, model: str, messages: list[dict] | str, params: SamplingOptions,
                cancel: threading.Event, progress: GenerationProgress) -> Generator[str, None, GenerationStats]:
        chat = not isinstance(messages, str)
        body = request_body(model, messages, params)
        with self._gen_lock:
            response = self._send(endpoint, "POST", "/chat/completions" if chat else "/completions", body,
                                  self._options.timeout_s, stream=True)
            if response.status_code != 200:
                raise self._status_error(endpoint, response, model, loading=False)
            done = threading.Event()
            watcher = threading.Thread(target=_close_on_cancel, args=(response, cancel, done), daemon=True,
                                       name="remote-stop")
            watcher.start()
            matcher = StopMatcher(params.stop)
            think = ReasoningCounter.for_reply_to(messages)  # a chunk counts as a token here, as ``counted`` does
            counted, server_prompt, server_completion, reason = 0, None, None, None
            try:
                for line in response.iter_lines():
                    chunk = parse_sse_line(line, chat)
                    if chunk is None:
                        continue
                    if chunk.finish_reason == "[DONE]":
                        break
                    server_prompt = chunk.prompt_tokens if chunk.prompt_tokens is not None else server_prompt
                    server_completion = (chunk.completion_tokens if chunk.completion_tokens is not None
                                         else server_completion)
                    if chunk.text:
                        now = time.monotonic()
                        counted += 1
                        progress.completion_tokens = counted
                        progress.first_token_at = progress.first_token_at or now
                        progress.last_token_at = now
                        if think.active:
                            think.feed(chunk.text)
                        out = matcher.push(chunk.text)
                        if out:
                            yield out
                        if matcher.stopped:
                            reason = "stop"
                            break
                    if chunk.finish_reason:
                        reason = finish_reason(chunk.finish_reason)
                    if cancel.is_set():
                        break
            except httpx.HTTPError as exc:
                if not cancel.is_set():
                    raise self._transport_error(endpoint, exc, self._options.timeout_s) from None
            except RemoteProtocolError as exc:
                raise BackendError(f"{self._label(endpoint, True)} sent a reply FitChat cannot read: {exc}") from None
            finally:
                done.set()
                _shutdown(response)
            if cancel.is_set():
                reason = "cancelled"
            elif reason is None:
                raise BackendError(f"The connection to {self._label(endpoint)} ended before the reply did (no "
                                   "finish reason). The text so far is kept; retry.")
            tail = matcher.flush()
            if tail:
                yield tail
            end = time.monotonic()
            completion = server_completion if server_completion is not None and reason != "cancelled" else counted
            progress.prompt_tokens = server_prompt or 0
            progress.completion_tokens = completion
            first = progress.first_token_at
            return GenerationStats(
                prompt_tokens=server_prompt or 0, completion_tokens=completion,
                ttft_s=(first - progress.started) if first else 0.0,
                decode_tokens_per_s=decode_tokens_per_s(completion, first, progress.last_token_at),
                total_s=end - progress.started, n_ctx=progress.n_ctx, finish_reason=reason,
                reasoning_tokens=think.tokens)


def request_body(model: str, messages: list[dict] | str, params: SamplingOptions) -> dict:
    """The OpenAI request, with the llama.cpp/vLLM sampling extras most servers accept."""
    body: dict = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                  "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                  "top_k": params.top_k, "min_p": params.min_p, "repeat_penalty": params.repeat_penalty}
    if isinstance(messages, str):
        body["prompt"] = messages
    else:
        body["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.presence_penalty or params.frequency_penalty:
        body["presence_penalty"], body["frequency_penalty"] = params.presence_penalty, params.frequency_penalty
    if params.json_schema.strip():
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "reply", "schema": json.loads(params.json_schema)}}
    if params.grammar.strip():
        body["grammar"] = params.grammar  # llama.cpp's server and vLLM take a GBNF grammar under this name
    return body


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    for known in ("Connection refused", "Name or service not known", "No route to host", "timed out",
                  "Temporary failure in name resolution", "Network is unreachable"):
        if known in text:
            return known.lower()
    return (text or type(exc).__name__)[:200]


def _socket(response: httpx.Response) -> Optional[socket.socket]:
    stream = response.extensions.get("network_stream")
    try:
        return stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # noqa: BLE001 - a transport without a socket: closing the response must do
        return None


def _shutdown_socket(response: httpx.Response) -> None:
    """Shut the connection's socket in both directions: a blocked read returns and the server sees
    the client gone (a plain close from another thread would wait for the read)."""
    sock = _socket(response)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _shutdown(response: httpx.Response) -> None:
    """End the connection now (see _shutdown_socket), then close the response."""
    _shutdown_socket(response)
    try:
        response.close()
    except Exception:  # noqa: BLE001 - closing a connection that is already broken
        pass


def _close_on_cancel(response: httpx.Response, cancel: threading.Event, done: threading.Event) -> None:
    while not done.is_set():
        if cancel.wait(_CANCEL_POLL_S):
            if not done.is_set():
                _shutdown_socket(response)
            return


def backend_factory(endpoints: Callable[[str], Optional[RemoteEndpoint]],
                    health: Optional[RemoteHealth] = None) -> Callable[[str], object]:
    """The ModelManager's factory: remote engines here, local runtimes in worker processes."""

    def make(name: str):
        if name == RemoteBackend.name:
            return RemoteBackend(endpoints, health=health)
        from backends.worker_client import WorkerBackend

        return WorkerBackend(name)

    return make


def backend_for_store(store, health: Optional[RemoteHealth] = None) -> Callable[[str], object]:
    """``backend_factory`` over a ``services.remote_endpoints.RemoteEndpointStore``."""
    return backend_factory(store.get, health)
