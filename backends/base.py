"""The Backend protocol every model runtime implements, and the plain data it exchanges.

No heavy imports here: the UI process imports this module, never a runtime.
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator, Iterator, NamedTuple, Optional, Protocol, Union, runtime_checkable

from core.generation import GenerationProgress, GenerationStats
from core.options import LOAD_OPTIONS_BY_BACKEND, LoadOptions, SamplingOptions, TransformersLoadOptions

AnyLoadOptions = Union[LoadOptions, TransformersLoadOptions]


class BackendError(Exception):
    """Something the user should read: the message says what went wrong and what to do."""

    kind = "error"


class ModelLoadError(BackendError):
    kind = "load"


class TemplateError(BackendError):
    kind = "template"


class PromptTooLongError(BackendError):
    kind = "prompt_too_long"


class WorkerCrashed(BackendError):
    kind = "crashed"


class NotLoadedError(BackendError):
    kind = "not_loaded"


class OutOfMemoryError(BackendError):
    """The device ran out of memory during a reply; the model stays loaded and the next reply can work."""
    kind = "out_of_memory"


class QualityRunError(BackendError):
    """A quality check that cannot run as asked (text too short, vocabularies differ)."""
    kind = "quality"


class UnsupportedRequestError(BackendError):
    """Sampling this backend cannot honour (a grammar, a JSON schema, penalties): the request's fault."""
    kind = "unsupported"


def refuse_unsupported_sampling(params: SamplingOptions, backend: str) -> None:
    """For backends without llama.cpp's grammar and penalties samplers: say so instead of ignoring them."""
    asked = [name for name, on in (("a grammar", bool(params.grammar.strip())),
                                    ("a JSON schema (response_format)", bool(params.json_schema.strip())),
                                    ("presence_penalty", bool(params.presence_penalty)),
                                    ("frequency_penalty", bool(params.frequency_penalty))) if on]
    if asked:
        raise UnsupportedRequestError(f"{' and '.join(asked)} cannot be honoured by {backend}; "
                                      "load a GGUF model (llama.cpp) for them.")


ERROR_KINDS = {cls.kind: cls for cls in
               (BackendError, ModelLoadError, TemplateError, PromptTooLongError, WorkerCrashed, NotLoadedError,
                OutOfMemoryError, QualityRunError, UnsupportedRequestError)}


@dataclass(frozen=True)
class LoadSpec:
    """What to load. ``options`` is the options model of ``backend`` (``LOAD_OPTIONS_BY_BACKEND``);
    a spec made without options gets that backend's defaults."""
    model_path: str
    options: AnyLoadOptions = field(default_factory=LoadOptions)
    backend: str = "llama_cpp"
    display_name: str = ""
    # Start the worker with no GPU visible. A CUDA build of llama.cpp keeps its compute buffers and
    # a CUDA context on the GPU even with 0 layers offloaded; on a full GPU only this runs it.
    hide_gpus: bool = False

    def __post_init__(self) -> None:
        expected = LOAD_OPTIONS_BY_BACKEND.get(self.backend)
        if expected is None or isinstance(self.options, expected):
            return
        if self.options == LoadOptions():  # the field default: options were not given
            object.__setattr__(self, "options", expected())
        else:
            raise TypeError(f"backend {self.backend!r} takes {expected.__name__}, not {type(self.options).__name__}")

    def to_dict(self) -> dict:
        return {"model_path": self.model_path, "options": self.options.model_dump(),
                "backend": self.backend, "display_name": self.display_name, "hide_gpus": self.hide_gpus}

    @classmethod
    def from_dict(cls, data: dict) -> "LoadSpec":
        options_model = LOAD_OPTIONS_BY_BACKEND.get(data["backend"], LoadOptions)
        return cls(data["model_path"], options_model(**data["options"]), data["backend"], data["display_name"],
                   bool(data.get("hide_gpus", False)))


@dataclass(frozen=True)
class BufferSize:
    device: str   # "CPU", "CUDA0", "CPU_Mapped", ...
    kind: str     # "model", "KV", "compute", "output", ...
    mib: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    backend: str
    n_ctx: int
    n_ctx_train: int
    n_layer: int
    n_gpu_layers: int
    gpu_offload_supported: bool
    n_threads: int
    kv_type: str
    flash_attn: bool
    template_origin: str
    load_seconds: float
    file_bytes: int
    buffers: tuple[BufferSize, ...] = ()
    worker_pid: Optional[int] = None
    n_parallel: int = 1  # replies decoded at once (slots)
    n_cpu_moe: int = 0   # blocks whose expert tensors llama.cpp put in host memory (expert offload)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelInfo":
        data = dict(data)
        data["buffers"] = tuple(BufferSize(**b) for b in data.get("buffers", ()))
        return cls(**data)


MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


class TokenLogprob(NamedTuple):
    """One generated token: its bytes, its log-probability under the model (a log-softmax of the raw
    logits, before any sampler step), and the most likely tokens at that position as (bytes, logprob)."""
    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


class TokenLogprobs:
    """The per-token log-probabilities of one reply, when asked for (``stream_chat(..., logprobs=n)``).
    The producer adds the entries of a delta's tokens before it yields that delta; the consumer takes
    them after each delta (and once more at the end): the entries taken so far cover the text so far."""

    def __init__(self) -> None:
        self._entries: list[TokenLogprob] = []
        self._lock = threading.Lock()

    def add(self, entries) -> None:
        with self._lock:
            self._entries.extend(entries)

    def take(self) -> list[TokenLogprob]:
        with self._lock:
            entries, self._entries = self._entries, []
        return entries


def check_logprobs(logprobs: Optional[int]) -> None:
    if logprobs is not None and not (isinstance(logprobs, int) and not isinstance(logprobs, bool)
                                     and 0 <= logprobs <= MAX_TOP_LOGPROBS):
        raise UnsupportedRequestError(f"logprobs must be a number of top tokens from 0 to {MAX_TOP_LOGPROBS}.")


def refuse_logprobs(logprobs: Optional[int], backend: str) -> None:
    """For backends that do not report per-token log-probabilities: say so instead of leaving them out."""
    if logprobs is not None:
        raise UnsupportedRequestError(f"logprobs cannot be reported by {backend}; load a GGUF model (llama.cpp) "
                                      "for them.")


class ChatStream(Iterator[str]):
    """An iterator of text deltas. ``progress`` counts tokens as they come (the producer updates
    it); ``stats`` is set once iteration has finished; ``logprobs`` receives per-token entries when
    the reply was asked for them."""

    def __init__(self, generator: Generator[str, None, GenerationStats],
                 progress: Optional[GenerationProgress] = None,
                 on_unstarted_close: Optional[Callable[[], None]] = None,
                 logprobs: Optional[TokenLogprobs] = None) -> None:
        self._gen = generator
        self.progress = progress or GenerationProgress(started=time.monotonic())
        self.stats: Optional[GenerationStats] = None
        self._on_unstarted_close = on_unstarted_close
        self.logprobs = logprobs or TokenLogprobs()

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.stats = stop.value
            raise StopIteration from None

    def close(self) -> None:
        unstarted = inspect.getgeneratorstate(self._gen) == inspect.GEN_CREATED
        self._gen.close()
        if unstarted and self._on_unstarted_close is not None:
            callback, self._on_unstarted_close = self._on_unstarted_close, None
            callback()


@runtime_checkable
class Backend(Protocol):
    """A loaded-or-not model runtime. One generation at a time."""

    name: str

    @property
    def info(self) -> Optional[ModelInfo]: ...

    def load(self, spec: LoadSpec) -> ModelInfo: ...

    def unload(self) -> None: ...

    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions,
                    cancel: threading.Event) -> ChatStream:
        """A backend that can report per-token log-probabilities also takes ``logprobs: Optional[int]``
        (None: not asked; n: the chosen token's and the n most likely ones), passed only when asked."""
