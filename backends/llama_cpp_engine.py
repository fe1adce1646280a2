"""llama.cpp through llama-cpp-python, in the current process. The app runs it inside the
supervised worker (``backends.worker_main``); the UI process never imports this module.

Generation is our own loop over llama.cpp's sampler: the prompt is evaluated in ``n_batch``
chunks (Stop is checked between them), each token is turned into bytes once, and UTF-8 and
stop strings are handled incrementally. This avoids ``create_completion(stream=True)``'s
hold-back logic, which re-detokenises the reply and was measured collapsing decode speed.
"""
from __future__ import annotations

import ctypes
import random
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Generator, Optional

from backends.base import BackendError, BufferSize, ChatStream, LoadSpec, ModelInfo, ModelLoadError, NotLoadedError, TemplateError
from backends.reply_loop import Decoding, check_prompt_fits, reply_stats, stream_reply
from core.chat_template import TemplateRenderError, TemplateSource, choose_template
# Templates render in a child process under RLIMIT_AS and a wall-clock kill (issue 13).
from services.template_process import check_template, render_chat_template
from core.generation import GenerationProgress, GenerationStats, Utf8Assembler
from core.gguf_header import GGUFError
from core.llama_log import is_error_line, parse_buffer_line
from core.options import SamplingOptions
from services.cpu import physical_cores
from services.gguf_file import read_header

DEFAULT_CTX = 4096
_KV_GGML_TYPE = {"f16": 1, "q8_0": 8, "q4_0": 2}


def offload_kqv(opts) -> bool:
    """llama.cpp's ``offload_kqv``: off keeps the whole KV cache (and attention) in RAM."""
    return getattr(opts, "kv_placement", "auto") != "ram"


class LlamaLogCapture:
    """Receives llama.cpp's log; keeps buffer-size lines and a tail of warnings and errors."""

    def __init__(self, echo=sys.stderr) -> None:
        self._partial = ""
        self._lock = threading.Lock()
        self.buffers: list[BufferSize] = []
        self.errors: deque[str] = deque(maxlen=50)
        self._echo = echo
        self._callback = None

    def install(self) -> None:
        import llama_cpp

        @llama_cpp.llama_log_callback
        def _on_log(level: int, text: bytes, user_data) -> None:
            self.feed(level, text.decode("utf-8", errors="replace"))

        self._callback = _on_log  # keep a reference: llama.cpp holds only the raw pointer
        llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))

    def reset(self) -> None:
        with self._lock:
            self.buffers = []
            self.errors.clear()

    def feed(self, level: int, text: str) -> None:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                parsed = parse_buffer_line(line)
                if parsed:
                    self.buffers.append(BufferSize(*parsed))
                elif level in (2, 3) or is_error_line(line):
                    self.errors.append(line.strip())
                    if self._echo:
                        print(line, file=self._echo, flush=True)


class LlamaCppEngine:
    name = "llama_cpp"

    def __init__(self) -> None:
        self._llm = None
        self._info: Optional[ModelInfo] = None
        self._template: Optional[TemplateSource] = None
        self._bos_text = ""
        self._eos_text = ""
        self._add_bos = False
        self._piece_buf = ctypes.create_string_buffer(256)
        self._log = LlamaLogCapture()
        self._log_installed = False

    @property
    def info(self) -> Optional[ModelInfo]:
        return self._info

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

        import llama_cpp
        from llama_cpp import Llama

        if not self._log_installed:
            self._log.install()
            self._log_installed = True
        self._log.reset()
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        n_gpu_layers = opts.n_gpu_layers if opts.n_gpu_layers is not None else (-1 if offload else 0)
        n_threads = opts.n_threads or physical_cores()
        started = time.monotonic()
        try:
            llm = Llama(
                spec.model_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads,
                n_threads_batch=n_threads, n_batch=opts.n_batch, n_ubatch=opts.n_batch,
                flash_attn=opts.flash_attn, type_k=_KV_GGML_TYPE[opts.kv_type],
                type_v=_KV_GGML_TYPE[opts.kv_type], offload_kqv=offload_kqv(opts), verbose=True,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            logged = list(self._log.errors)
            detail = ([line for line in logged if "error" in line.lower()] or logged or [str(exc)])[-1]
            raise ModelLoadError(f"llama.cpp could not load {Path(spec.model_path).name}: {detail}") from None
        load_seconds = time.monotonic() - started

        template = choose_template(llm.metadata.get("tokenizer.chat_template"))
        vocab = llm._model
        bos, eos = vocab.token_bos(), vocab.token_eos()
        bos_text = vocab.token_get_text(bos) if bos >= 0 else ""
        eos_text = vocab.token_get_text(eos) if eos >= 0 else ""
        try:
            check_template(template, bos_text, eos_text)
        except TemplateRenderError as exc:
            llm.close()
            raise TemplateError(str(exc)) from None

        self._llm, self._template = llm, template
        self._bos_text, self._eos_text = bos_text, eos_text
        self._add_bos = bool(vocab.add_bos_token())
        self._info = ModelInfo(
            name=spec.display_name or Path(spec.model_path).name,
            path=spec.model_path, backend=self.name, n_ctx=llm.n_ctx(), n_ctx_train=n_ctx_train,
            n_layer=n_layer, n_gpu_layers=n_gpu_layers, gpu_offload_supported=offload,
            n_threads=n_threads, kv_type=opts.kv_type, flash_attn=opts.flash_attn,
            template_origin=template.origin, load_seconds=round(load_seconds, 3),
            file_bytes=header.file_size or 0, buffers=tuple(self._log.buffers),
        )
        return self._info

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
        self._llm = None
        self._info = None
        self._template = None

    # -- quality check (backends.text_scoring) --------------------------------------------------
    def score_text(self, text: str, opts, cancel: threading.Event, ref=None, keep_top: bool = False):
        """The quality check's windows on the loaded model (``backends.text_scoring.score_text``)."""
        from backends.text_scoring import llama_tokenize, llama_window_logits, score_text

        if self._llm is None:
            raise NotLoadedError("No model is loaded.")
        llm = self._llm
        if opts.window > llm.n_ctx():
            raise BackendError(f"The quality window ({opts.window} tokens) is longer than the loaded context "
                               f"({llm.n_ctx()}); load the model with a longer context or use a smaller window.")
        return score_text(text, opts, lambda t: llama_tokenize(llm, t),
                          lambda chunk, first: llama_window_logits(llm, chunk, first, opts.batch, cancel),
                          cancel, ref, self._info.name, keep_top)

    # -- generation ------------------------------------------------------------------------
    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions,
                    cancel: threading.Event) -> ChatStream:
        if self._llm is None:
            raise NotLoadedError("No model is loaded.")
        progress = GenerationProgress(started=time.monotonic(), n_ctx=self._llm.n_ctx())
        return ChatStream(self._decode_failure_reported(self._generate(messages, params, cancel, progress)), progress)

    def _decode_failure_reported(self, reply: Generator[str, None, GenerationStats]) -> Generator[str, None, GenerationStats]:
        """llama.cpp's buffers are allocated at load, so a failing ``llama_decode`` (an allocation or
        device error) is rare; it becomes a message, and the next reply starts from a clean cache."""
        try:
            return (yield from reply)
        except RuntimeError as exc:
            if "llama_decode" not in str(exc):
                raise
            self._llm.reset()
            logged = [line for line in self._log.errors if line][-1:]
            raise BackendError(f"llama.cpp could not evaluate this reply ({exc}"
                               + (f"; {logged[0][:200]}" if logged else "") + "). The model is still loaded; "
                               "if this repeats, load it with a smaller context or fewer GPU layers.") from None

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        vocab = self._llm._model.vocab
        n = llama_cpp.llama_token_to_piece(vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        return self._piece_buf.raw[:n]

    def tokenize_prompt(self, messages: list[dict] | str) -> list[int]:
        """Messages go through the chat template; a string is a raw completion prompt."""
        if isinstance(messages, str):
            prompt = messages
        else:
            try:
                prompt = render_chat_template(self._template.text, messages,
                                              bos_token=self._bos_text, eos_token=self._eos_text)
            except TemplateRenderError as exc:
                raise TemplateError(str(exc)) from None
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the KV cache of the longest common prefix with the previous request."""
        llm = self._llm
        cached = llm._input_ids[: llm.n_tokens].tolist()
        common = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # at least one token must be evaluated for logits
        if common > 0 and llm._ctx.kv_cache_seq_rm(-1, common, -1):
            llm.n_tokens = common
            return common
        llm.reset()
        return 0

    def _generate(self, messages: list[dict] | str, params: SamplingOptions, cancel: threading.Event,
                  progress: GenerationProgress) -> Generator[str, None, GenerationStats]:
        import llama_cpp

        llm = self._llm
        tokens = self.tokenize_prompt(messages)
        progress.prompt_tokens = len(tokens)
        n_ctx = llm.n_ctx()
        check_prompt_fits(len(tokens), n_ctx)

        cached = self._reuse_prefix(tokens)
        todo = tokens[cached:]
        for i in range(0, len(todo), llm.n_batch):
            if cancel.is_set():
                return reply_stats(progress.started, len(tokens), n_ctx, "cancelled", cached=cached)
            llm.eval(todo[i: i + llm.n_batch])

        llm.set_seed(params.seed if params.seed is not None else random.randrange(2**32 - 1))
        sampler = llm._init_sampler(top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
                                    temp=params.temperature, repeat_penalty=params.repeat_penalty)
        vocab = llm._model.vocab
        text = Utf8Assembler()
        step = Decoding(sample=lambda: sampler.sample(llm._ctx, -1),
                        is_end=lambda token: llama_cpp.llama_vocab_is_eog(vocab, token),
                        text=lambda token: text.feed(self._piece(token)), flush=text.flush,
                        advance=lambda token: llm.eval([token]), context_full=lambda: llm.n_tokens + 1 >= n_ctx)
        try:
            return (yield from stream_reply(step, params, self._template.stop, cancel, progress, len(tokens),
                                            n_ctx, cached))
        finally:
            sampler.close()
