"""llama.cpp through llama-cpp-python's low-level API, in the current process. The app runs it inside
the supervised worker (``backends.worker_main``); the UI process never imports this module.

Loading builds llama.cpp's parameters in ``backends.llama_params``; generation runs in
``backends.llama_batch_loop``: one thread owns the context, decodes every running reply's next token
in one batch and samples each in C with its own sampler chain (``backends.llama_sampling``). Text is
assembled incrementally (UTF-8 and stop strings) from cached token pieces; nothing re-detokenises
the reply and no logits are copied into Python. ``LoadOptions.parallel`` replies run at once, each
in a slot (sequence) that keeps its own prefix cache (``backends.llama_slots``).
"""
from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Generator, Optional

from backends.base import (BackendError, BufferSize, ChatStream, LoadSpec, ModelInfo, ModelLoadError, NotLoadedError,
                           TemplateError, TokenLogprobs, check_logprobs)
from backends.llama_batch_loop import BatchLoop, Reply
from backends.llama_params import llama_params, offload_kqv  # noqa: F401 (offload_kqv: tests import it here)
from backends.llama_sampling import SamplerChain
from backends.reply_loop import check_prompt_fits
from core.chat_template import TemplateRenderError, TemplateSource, choose_template, render_prompt
# Templates render in a child process under RLIMIT_AS and a wall-clock kill (issue 13).
from services.template_process import check_template, render_chat_template
from backends.prompt_pieces import tokenize_chat
from core.generation import GenerationProgress, GenerationStats, ReasoningCounter
from core.gguf_header import GGUFError
from core.llama_log import expert_layers_in_ram, is_error_line, parse_buffer_line, parse_override_line
from core.options import SamplingOptions
from services.cpu import physical_cores
from services.gguf_file import read_header

DEFAULT_CTX = 4096


# llama.cpp keeps only the raw pointer of its log callback, process-wide. One callback lives for the
# process (a capture's own closure died with it and left llama.cpp calling freed memory: a later
# log line in the same process was a segmentation fault); it forwards to the capture now installed.
_log_target = None
_log_callback = None


def _forward_log(level: int, text: bytes, user_data) -> None:
    target = _log_target
    if target is not None:
        target.feed(level, text.decode("utf-8", errors="replace"))


def llama_cpp_log_route() -> None:
    global _log_callback
    import llama_cpp

    if _log_callback is None:
        _log_callback = llama_cpp.llama_log_callback(_forward_log)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


class LlamaLogCapture:
    """Receives llama.cpp's log; keeps buffer-size lines and a tail of warnings and errors."""

    def __init__(self, echo=sys.stderr) -> None:
        self._partial = ""
        self._lock = threading.Lock()
        self.buffers: list[BufferSize] = []
        self.overridden: list[tuple[str, str]] = []  # (tensor, buffer type): expert offload
        self.errors: deque[str] = deque(maxlen=50)
        self._echo = echo

    def install(self) -> None:
        """Route llama.cpp's log to this capture (until another capture installs itself)."""
        global _log_target
        _log_target = self
        llama_cpp_log_route()

    def uninstall(self) -> None:
        global _log_target
        if _log_target is self:
            _log_target = None

    def reset(self) -> None:
        with self._lock:
            self.buffers = []
            self.overridden = []
            self.errors.clear()

    def feed(self, level: int, text: str) -> None:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                parsed = parse_buffer_line(line)
                override = None if parsed else parse_override_line(line)
                if parsed:
                    self.buffers.append(BufferSize(*parsed))
                elif override:
                    self.overridden.append(override)
                elif level in (2, 3) or is_error_line(line):
                    self.errors.append(line.strip())
                    if self._echo:
                        print(line, file=self._echo, flush=True)


class LlamaCppEngine:
    name = "llama_cpp"
    _backend_initialized = False

    def __init__(self) -> None:
        self._params_keep = None
        self._model = None
        self._ctx = None
        self._vocab = None
        self._loop: Optional[BatchLoop] = None
        self._info: Optional[ModelInfo] = None
        self._template: Optional[TemplateSource] = None
        self._bos_text = ""
        self._eos_text = ""
        self._add_bos = False
        self._n_vocab = 0
        self._log = LlamaLogCapture()

    @property
    def info(self) -> Optional[ModelInfo]:
        return self._info

    @property
    def loop(self) -> Optional[BatchLoop]:
        """The decode loop of the loaded model (its slots, step count and recent replies' records)."""
        return self._loop

    def running(self) -> int:
        """Replies being decoded right now."""
        return self._loop.running() if self._loop is not None else 0

    # -- loading ---------------------------------------------------------------------------
    def load(self, spec: LoadSpec) -> ModelInfo:
        self.unload()
        try:
            header = read_header(spec.model_path)
        except GGUFError as exc:
            raise ModelLoadError(f"Cannot load {Path(spec.model_path).name}: {exc}") from None
        n_ctx_train = int(header.arch_value("context_length", 0) or 0)
        n_layer = int(header.arch_value("block_count", 0) or 0)
        opts = spec.options
        n_ctx = opts.n_ctx or (min(DEFAULT_CTX, n_ctx_train) if n_ctx_train else DEFAULT_CTX)
        if n_ctx_train and n_ctx > n_ctx_train:
            raise ModelLoadError(
                f"A context of {n_ctx} tokens is more than this model was trained for ({n_ctx_train}).")

        import llama_cpp as lc

        if not LlamaCppEngine._backend_initialized:
            lc.llama_backend_init()
            LlamaCppEngine._backend_initialized = True
        self._log.install()
        self._log.reset()
        offload = bool(lc.llama_supports_gpu_offload())
        n_gpu_layers = opts.n_gpu_layers if opts.n_gpu_layers is not None else (-1 if offload else 0)
        params = llama_params(opts, n_ctx, n_gpu_layers, opts.n_threads or physical_cores(),
                              getattr(opts, "parallel", None) or 1)
        name = Path(spec.model_path).name
        started = time.monotonic()
        model = lc.llama_model_load_from_file(spec.model_path.encode("utf-8"), params.model)
        self._params_keep = params.keep  # llama.cpp keeps pointing at some (expert-offload patterns)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {name}: {self._logged_error('failed to load model')}")
        ctx = lc.llama_init_from_model(model, params.context)
        if not ctx:
            lc.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not load {name}: {self._logged_error('failed to create the context')}")
        load_seconds = time.monotonic() - started

        vocab = lc.llama_model_get_vocab(model)
        template = choose_template(self._meta(model, "tokenizer.chat_template"))
        bos, eos = lc.llama_vocab_bos(vocab), lc.llama_vocab_eos(vocab)
        bos_text = lc.llama_vocab_get_text(vocab, bos).decode("utf-8", errors="replace") if bos >= 0 else ""
        eos_text = lc.llama_vocab_get_text(vocab, eos).decode("utf-8", errors="replace") if eos >= 0 else ""
        try:
            check_template(template, bos_text, eos_text)
        except TemplateRenderError as exc:
            lc.llama_free(ctx)
            lc.llama_model_free(model)
            raise TemplateError(str(exc)) from None

        self._model, self._ctx, self._vocab, self._template = model, ctx, vocab, template
        self._bos_text, self._eos_text = bos_text, eos_text
        self._add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
        self._n_vocab = lc.llama_vocab_n_tokens(vocab)
        n_ctx_seq = lc.llama_n_ctx_seq(ctx)
        self._loop = BatchLoop(ctx, vocab, lc.llama_n_batch(ctx), params.n_parallel, n_ctx_seq,
                               self._describe_decode_failure)
        self._info = ModelInfo(
            name=spec.display_name or name,
            path=spec.model_path, backend=self.name, n_ctx=n_ctx_seq, n_ctx_train=n_ctx_train,
            n_layer=n_layer, n_gpu_layers=n_gpu_layers, gpu_offload_supported=offload,
            n_threads=params.n_threads, kv_type=opts.kv_cache_type, flash_attn=opts.flash_attn,
            template_origin=template.origin, load_seconds=round(load_seconds, 3),
            file_bytes=header.file_size or 0, buffers=tuple(self._log.buffers), n_parallel=params.n_parallel,
            n_cpu_moe=expert_layers_in_ram(self._log.overridden),
        )
        return self._info

    def _logged_error(self, fallback: str) -> str:
        logged = list(self._log.errors)
        return ([line for line in logged if "error" in line.lower()] or logged or [fallback])[-1]

    @staticmethod
    def _meta(model, key: str) -> Optional[str]:
        import llama_cpp as lc

        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_model_meta_val_str(model, key.encode("utf-8"), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1

    def unload(self) -> None:
        import llama_cpp as lc

        if self._loop is not None:
            self._loop.close()
        if self._ctx is not None:
            lc.llama_free(self._ctx)
        if self._model is not None:
            lc.llama_model_free(self._model)
        self._loop = self._ctx = self._model = self._vocab = None
        self._params_keep = None  # after the model is freed
        self._log.uninstall()
        self._info = None
        self._template = None

    # -- quality check (backends.text_scoring) --------------------------------------------------
    def score_text(self, text: str, opts, cancel: threading.Event, ref=None, keep_top: bool = False):
        """The quality check's windows on the loaded model (``backends.text_scoring.score_text``), run
        while no reply is decoding; every slot's prefix cache is gone afterwards."""
        from backends.text_scoring import llama_tokenize, llama_window_logits, score_text

        if self._loop is None:
            raise NotLoadedError("No model is loaded.")
        llm = _ScoringView(self)
        if opts.window > llm.n_ctx():
            raise BackendError(f"The quality window ({opts.window} tokens) is longer than the loaded context "
                               f"({llm.n_ctx()}); load the model with a longer context or use a smaller window.")
        events = score_text(text, opts, lambda t: llama_tokenize(llm, t),
                            lambda chunk, first: llama_window_logits(llm, chunk, first, opts.batch, cancel),
                            cancel, ref, self._info.name, keep_top)
        return self._loop.exclusive(events)

    # -- generation ------------------------------------------------------------------------
    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions,
                    cancel: threading.Event, logprobs: Optional[int] = None) -> ChatStream:
        """``logprobs``: None, or report each token's log-probability and the ``logprobs`` most likely
        tokens at its position (``ChatStream.logprobs``)."""
        if self._loop is None:
            raise NotLoadedError("No model is loaded.")
        check_logprobs(logprobs)
        progress = GenerationProgress(started=time.monotonic(), n_ctx=self._info.n_ctx)
        entries = TokenLogprobs()
        return ChatStream(self._generate(messages, params, cancel, progress, logprobs, entries), progress,
                          logprobs=entries)

    def _describe_decode_failure(self, rc: int) -> str:
        """llama.cpp's buffers are allocated at load, so a failing ``llama_decode`` (an allocation or
        device error) is rare; it becomes a message, and the slot starts again from a clean cache."""
        logged = [line for line in self._log.errors if line][-1:]
        return (f"llama.cpp could not evaluate this reply (llama_decode returned {rc}"
                + (f"; {logged[0][:200]}" if logged else "") + "). The model is still loaded; "
                "if this repeats, load it with a smaller context or fewer GPU layers.")

    def tokenize(self, text: str, add_bos: bool, special: bool = True) -> list[int]:
        import llama_cpp as lc

        data = text.encode("utf-8")
        size = len(data) + 2
        while True:
            buf = (lc.llama_token * size)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, size, add_bos, special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def tokenize_prompt(self, messages: list[dict] | str) -> list[int]:
        """Messages go through the chat template; a string is a raw completion prompt."""
        if not isinstance(messages, str):
            # Only the template's own text may produce special tokens, never a user's (issue 13).
            return tokenize_chat(self._render, messages, self.tokenize, self._add_bos, self._bos_text)
        prompt = messages
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        return self.tokenize(prompt, add_bos)

    def _render(self, messages: list[dict]) -> str:
        try:
            # render_prompt: a trailing assistant message is continued (Continue), not answered.
            return render_prompt(render_chat_template, self._template.text, messages,
                                 bos_token=self._bos_text, eos_token=self._eos_text)
        except TemplateRenderError as exc:
            raise TemplateError(str(exc)) from None

    def _generate(self, messages: list[dict] | str, params: SamplingOptions, cancel: threading.Event,
                  progress: GenerationProgress, logprobs: Optional[int] = None,
                  entries: Optional[TokenLogprobs] = None) -> Generator[str, None, GenerationStats]:
        loop = self._loop
        tokens = self.tokenize_prompt(messages)
        progress.prompt_tokens = len(tokens)
        check_prompt_fits(len(tokens), progress.n_ctx)
        sampler = SamplerChain(params, self._n_vocab, self._vocab)  # a bad grammar is refused here
        reply = Reply(tokens, params, self._template.stop, cancel, progress, sampler, logprobs,
                      ReasoningCounter.for_reply_to(messages))
        loop.submit(reply)
        try:
            while True:
                item = reply.out.get()
                if isinstance(item, str):
                    yield item
                elif isinstance(item, list):  # the log-softmax runs here, not in the decode thread
                    entries.add(loop.logprob_entries(item, logprobs))
                elif isinstance(item, GenerationStats):
                    return item
                else:
                    raise item
        finally:
            if not reply.done:  # the consumer left: the loop ends the reply and frees its slot
                reply.closed = True
                loop.wake()


class _ScoringView:
    """The parts of llama-cpp-python's ``Llama`` that ``backends.text_scoring`` reads, over this
    engine's own model and context."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        import llama_cpp as lc

        memory = lc.llama_get_memory(engine._ctx)
        self._engine = engine
        self._model = SimpleNamespace(vocab=engine._vocab)
        self._ctx = SimpleNamespace(ctx=engine._ctx, kv_cache_clear=lambda: lc.llama_memory_clear(memory, True))
        self.n_batch = engine._loop.n_batch
        self.n_tokens = 0

    def n_ctx(self) -> int:
        return self._engine._info.n_ctx

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._engine.tokenize(text.decode("utf-8", errors="replace"), add_bos, special)
