"""The contract every Backend passes, with a real model (no test doubles).

Parametrised over backends: each case gives a backend and a LoadSpec for a real model it can run.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from backends.base import (Backend, BackendError, LoadSpec, ModelLoadError, NotLoadedError, PromptTooLongError, TemplateError,
                           WorkerCrashed)
from backends.worker_client import WorkerBackend
from core.options import LoadOptions, SamplingOptions, TransformersLoadOptions

pytestmark = pytest.mark.real_model

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
GREEDY = SamplingOptions(temperature=0.0, max_tokens=48, seed=7)


# The transformers cases load a bf16 safetensors copy of the same model, made at test time.
TEMPLATE_ORIGIN = {"llama_cpp": "gguf", "transformers": "tokenizer", "remote": "server"}
LOCAL = ("llama_cpp", "transformers")  # runtimes in a worker process of ours


@pytest.fixture(scope="module", params=["llama_cpp", "transformers_bf16", "transformers_nf4", "remote"])
def case(request, embedded_model):
    if request.param == "remote":
        # llama-cpp-python's own OpenAI server on the same model, reached over HTTP.
        from backends.remote_engine import RemoteBackend
        from core.options import RemoteLoadOptions
        from core.remote import make_endpoint
        from tests.remote_servers import ALIAS, SERVER_KEY, LlamaServer

        server = LlamaServer(embedded_model).start()
        endpoints = {"llama-server": make_endpoint("llama-server", server.url, SERVER_KEY)}
        backend = RemoteBackend(endpoints.get)
        yield backend, LoadSpec(ALIAS, RemoteLoadOptions(endpoint="llama-server", n_ctx=1024), backend="remote")
        backend.close()
        server.stop()
        return
    if request.param == "llama_cpp":
        backend = WorkerBackend("llama_cpp")
        spec = LoadSpec(str(embedded_model), LoadOptions(n_ctx=1024), display_name="smollm2")
    else:
        quantization = request.param.removeprefix("transformers_")
        backend = WorkerBackend("transformers")
        spec = LoadSpec(str(request.getfixturevalue("hf_checkpoint")),
                        TransformersLoadOptions(quantization=quantization, n_ctx=1024),
                        backend="transformers", display_name=f"smollm2 {quantization}")
    yield backend, spec
    backend.unload()


@pytest.fixture
def loaded(case):
    backend, spec = case
    if backend.info is None:
        backend.load(spec)
    return backend


def collect(stream) -> tuple[list[str], object]:
    deltas = list(stream)
    return deltas, stream.stats


def test_implements_protocol(case):
    assert isinstance(case[0], Backend)


def test_load_reports_the_model(case):
    backend, spec = case
    info = backend.load(spec)
    assert info.n_ctx == 1024 and info.n_ctx_train >= 1024
    assert info.template_origin == TEMPLATE_ORIGIN[backend.name]
    if backend.name in LOCAL:
        assert info.n_layer > 0 and info.worker_pid
    assert backend.info == info


def test_streams_text_deltas_with_stats(loaded):
    deltas, stats = collect(loaded.stream_chat(PROMPT, GREEDY, threading.Event()))
    assert len(deltas) > 3 and all(isinstance(d, str) and d for d in deltas)
    assert stats.completion_tokens > 3
    if loaded.name in LOCAL:  # llama_cpp.server sends no usage when streaming: its prompt count is unknown
        assert stats.prompt_tokens > 5
    assert stats.finish_reason in ("stop", "length")
    assert stats.ttft_s > 0 and stats.decode_tokens_per_s > 0 and stats.n_ctx == 1024


def test_max_tokens_and_determinism(loaded):
    params = SamplingOptions(temperature=0.8, seed=1234, max_tokens=12)
    a, sa = collect(loaded.stream_chat(PROMPT, params, threading.Event()))
    b, sb = collect(loaded.stream_chat(PROMPT, params, threading.Event()))
    assert "".join(a) == "".join(b)
    assert sa.completion_tokens <= 12 and sa.finish_reason in ("length", "stop")


def test_stop_string_cuts_the_reply(loaded):
    full = "".join(loaded.stream_chat(PROMPT, GREEDY, threading.Event()))
    words = [w for w in full.split() if len(w) > 3]
    assert len(words) > 3, full
    stop_word = words[len(words) // 2]
    cut = "".join(loaded.stream_chat(PROMPT, GREEDY.model_copy(update={"stop": (stop_word,)}), threading.Event()))
    assert cut == full[: full.index(stop_word)]


def test_cancel_stops_within_one_second_and_keeps_partial_text(loaded):
    cancel = threading.Event()
    stream = loaded.stream_chat(PROMPT, SamplingOptions(max_tokens=2000), cancel)
    text = next(stream)
    cancel.set()
    started = time.monotonic()
    text += "".join(stream)
    assert time.monotonic() - started < 1.0
    assert text and stream.stats.finish_reason == "cancelled"
    assert stream.stats.completion_tokens < 2000


def test_abandoned_stream_stops_and_next_request_works(loaded):
    stream = loaded.stream_chat(PROMPT, SamplingOptions(max_tokens=2000), threading.Event())
    next(stream)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 2.0
    deltas, stats = collect(loaded.stream_chat(PROMPT, GREEDY, threading.Event()))
    assert deltas and stats.finish_reason in ("stop", "length")


def test_prompt_longer_than_context_is_refused(loaded):
    long_prompt = [{"role": "user", "content": "word " * 3000}]
    # llama_cpp.server answers an overlong streamed prompt with an empty stream, no error event.
    expected = (PromptTooLongError, "context holds 1024") if loaded.name in LOCAL else (BackendError, "ended before")
    with pytest.raises(expected[0], match=expected[1]):
        list(loaded.stream_chat(long_prompt, GREEDY, threading.Event()))
    assert list(loaded.stream_chat(PROMPT, GREEDY, threading.Event()))


def test_worker_crash_is_reported_and_the_next_load_works(case):
    backend, spec = case
    if backend.name not in LOCAL:
        pytest.skip("no worker process: a remote server killed mid-reply is in test_remote_backend.py")
    info = backend.load(spec)
    stream = backend.stream_chat(PROMPT, SamplingOptions(max_tokens=2000), threading.Event())
    next(stream)
    os.kill(info.worker_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match="SIGKILL"):
        list(stream)
    assert backend.info is None
    with pytest.raises(NotLoadedError):
        backend.stream_chat(PROMPT, GREEDY, threading.Event())
    assert backend.load(spec).worker_pid != info.worker_pid
    assert list(backend.stream_chat(PROMPT, GREEDY, threading.Event()))


def test_unload_ends_the_worker_process(case):
    backend, spec = case
    if backend.name not in LOCAL:
        pytest.skip("no worker process")
    pid = backend.load(spec).worker_pid
    backend.unload()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(NotLoadedError):
        backend.stream_chat(PROMPT, GREEDY, threading.Event())


def test_hostile_chat_template_is_refused_at_load_without_side_effects(case, bad_models):
    backend, spec = case
    if backend.name != "llama_cpp":
        pytest.skip("GGUF-specific")
    with pytest.raises(TemplateError, match="sandbox"):
        backend.load(LoadSpec(str(bad_models["escape_template"]), spec.options))
    assert not bad_models["canary"].exists()


def test_model_without_template_uses_chatml_fallback(case, bad_models):
    backend, spec = case
    if backend.name != "llama_cpp":
        pytest.skip("GGUF-specific")
    info = backend.load(LoadSpec(str(bad_models["no_template"]), spec.options))
    assert info.template_origin == "chatml-fallback"
    reply = "".join(backend.stream_chat(PROMPT, GREEDY, threading.Event()))
    assert reply and "<|im_end|>" not in reply


def test_broken_model_is_a_load_error_not_a_crash(case, bad_models):
    backend, spec = case
    if backend.name != "llama_cpp":
        pytest.skip("GGUF-specific")
    with pytest.raises(ModelLoadError, match="could not load|Cannot load"):
        backend.load(LoadSpec(str(bad_models["missing_tensor"]), spec.options))
    with pytest.raises(ModelLoadError, match="truncated"):
        backend.load(LoadSpec(str(bad_models["truncated"]), spec.options))
    assert backend.load(spec).n_ctx == 1024


def test_progress_counts_tokens_while_streaming(loaded):
    stream = loaded.stream_chat(PROMPT, SamplingOptions(max_tokens=40, temperature=0.0), threading.Event())
    seen = []
    for _ in stream:
        seen.append(stream.progress.completion_tokens)
    assert stream.progress.prompt_tokens == stream.stats.prompt_tokens
    assert seen == sorted(seen) and 0 < seen[-1] <= stream.stats.completion_tokens
    assert stream.progress.first_token_at is not None and stream.progress.n_ctx == 1024


def test_raw_prompt_completion(loaded):
    stream = loaded.stream_chat("The capital of France is", SamplingOptions(temperature=0.0, max_tokens=8),
                                threading.Event())
    text = "".join(stream)
    assert text and stream.stats.prompt_tokens < 12  # no chat template around it
