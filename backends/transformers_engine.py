"""transformers (safetensors: NF4, int8, GPTQ, bf16, fp16) in the current process. The app runs it
inside the supervised worker (``backends.worker_main --backend transformers``); the UI process never
imports this module.

Same structure as ``LlamaCppEngine``: the chat template renders in our sandbox, the prompt is
evaluated in ``n_batch`` chunks (Stop is checked between them), and our own loop samples one token
at a time (Stop is checked between tokens, so a stop lands within one token's time), detokenises
incrementally and matches stop strings on the text. Decoding uses a DynamicCache, or with
``compile`` a StaticCache and a ``torch.compile``d single-token step.
"""
from __future__ import annotations

import gc
import random
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Generator, Optional

from backends.base import (ChatStream, LoadSpec, ModelInfo, ModelLoadError, NotLoadedError, OutOfMemoryError,
                           TemplateError, refuse_logprobs, refuse_unsupported_sampling)
from backends.reply_loop import Decoding, check_prompt_fits, reply_stats, stream_reply
from core.chat_template import TemplateRenderError, TemplateSource, choose_template, render_prompt
# Templates render in a child process under RLIMIT_AS and a wall-clock kill (issue 13).
from services.template_process import check_template, render_chat_template
from backends.prompt_pieces import tokenize_chat
from core.detokenize import IncrementalDetokenizer
from core.generation import GenerationProgress, GenerationStats, ReasoningCounter
from core.hf_memory import MIB
from core.options import SamplingOptions, TransformersLoadOptions
from services.cpu import physical_cores


class TransformersEngine:
    name = "transformers"

    def __init__(self) -> None:
        self.model = None
        self.tokenizer = None
        self.plan = None
        self.decoder = None
        self._info: Optional[ModelInfo] = None
        self._template: Optional[TemplateSource] = None
        self._bos_id: Optional[int] = None
        self._bos_text = ""
        self._eos_ids: frozenset[int] = frozenset()

    @property
    def info(self) -> Optional[ModelInfo]:
        return self._info

    # -- loading ---------------------------------------------------------------------------
    def load(self, spec: LoadSpec) -> ModelInfo:
        self.unload()
        opts = spec.options
        if not isinstance(opts, TransformersLoadOptions):
            raise ModelLoadError("The transformers backend needs TransformersLoadOptions.")
        import torch

        from backends.hf_loading import load_model, plan_load

        torch.set_num_threads(opts.n_threads or physical_cores())
        started = time.monotonic()
        plan = plan_load(spec.model_path, opts)  # every check that needs no weights
        tokenizer = self._load_tokenizer(plan.repo.path)
        template = self._check_template(tokenizer)
        model = load_model(plan)
        self.model, self.tokenizer, self.plan, self._template = model, tokenizer, plan, template
        try:
            self.decoder = self._make_decoder(plan)
        except Exception:
            self.unload()
            raise
        self._eos_ids = self._eos_token_ids(model, tokenizer)
        self._info = self._describe(spec, plan, time.monotonic() - started)
        self._log_memory()
        return self._info

    def _load_tokenizer(self, path: Path):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ModelLoadError(f"The tokenizer of {path.name} cannot be loaded: {str(exc)[:300]}") from None
        self._bos_id = tokenizer.bos_token_id
        self._bos_text = tokenizer.bos_token or ""
        adds_bos = self._bos_id is not None and tokenizer("a").input_ids[:1] == [self._bos_id]
        self._bos_id = self._bos_id if adds_bos else None
        return tokenizer

    def _check_template(self, tokenizer) -> TemplateSource:
        raw = tokenizer.chat_template
        if isinstance(raw, dict):  # several named templates: the default one
            raw = raw.get("default") or next(iter(raw.values()), None)
        template = choose_template(raw if isinstance(raw, str) else None, origin="tokenizer")
        try:
            check_template(template, self._bos_text, tokenizer.eos_token or "")
        except TemplateRenderError as exc:
            raise TemplateError(str(exc)) from None
        return template

    def _make_decoder(self, plan):
        import torch

        from backends.hf_decode import EagerDecoder, StaticDecoder
        from backends.hf_loading import TORCH_DTYPES

        device = self.input_device()
        if not plan.options.compile:
            return EagerDecoder(self.model, device)
        decoder = StaticDecoder(self.model, device, plan.n_ctx, TORCH_DTYPES[plan.dtype])
        if decoder.compile_error:
            print(f"torch.compile failed; decoding with the static cache uncompiled: {decoder.compile_error}",
                  file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return decoder

    def input_device(self):
        import torch

        device = self.model.get_input_embeddings().weight.device
        return torch.device("cuda", 0) if device.type == "meta" else device  # meta: offloaded by accelerate

    @staticmethod
    def _eos_token_ids(model, tokenizer) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), model.config, tokenizer):
            value = getattr(source, "eos_token_id", None)
            ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
        return frozenset(int(i) for i in ids)

    def _describe(self, spec: LoadSpec, plan, load_seconds: float) -> ModelInfo:
        import torch

        from backends.hf_loading import memory_buffers

        est, dims = plan.estimate, plan.repo.dims
        n_gpu_layers = 0 if est.cpu_only else -1 if est.fully_on_gpu else est.gpu_blocks + 1
        kv_device = "CUDA0" if self.input_device().type == "cuda" else "CPU"
        return ModelInfo(
            name=spec.display_name or plan.repo.path.name, path=spec.model_path, backend=self.name,
            n_ctx=plan.n_ctx, n_ctx_train=dims.max_position_embeddings, n_layer=dims.n_layer,
            n_gpu_layers=n_gpu_layers, gpu_offload_supported=plan.support.cuda, n_threads=torch.get_num_threads(),
            kv_type=f"{plan.dtype}" + (f" static, {self.decoder.name}" if plan.options.compile else ""),
            flash_attn=plan.attention == "flash_attention_2", template_origin=self._template.origin,
            load_seconds=round(load_seconds, 3), file_bytes=plan.repo.weight_bytes,
            buffers=memory_buffers(self.model, self.decoder.kv_bytes(), kv_device),
        )

    def _log_memory(self) -> None:
        est = self.plan.estimate
        measured = {b.device: b.mib for b in self._info.buffers if b.kind == "model"}
        print(f"memory ({self.plan.options.quantization}): predicted weights GPU {est.gpu.weights / MIB:.1f} MiB, "
              f"CPU {est.cpu.weights / MIB:.1f} MiB; get_memory_footprint predicted {est.footprint_bytes / MIB:.1f} "
              f"MiB, measured {self.model.get_memory_footprint() / MIB:.1f} MiB; measured weights {measured}",
              file=sys.stderr, flush=True)

    def unload(self) -> None:
        if self.decoder is not None:
            self.decoder.release()
        self.model = self.tokenizer = self.plan = self.decoder = None
        self._info = None
        self._template = None
        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- quality check (backends.text_scoring) --------------------------------------------------
    def score_text(self, text: str, opts, cancel: threading.Event, ref=None, keep_top: bool = False):
        """The quality check's windows on the loaded model (``backends.text_scoring.score_text``)."""
        from backends.base import BackendError
        from backends.text_scoring import hf_tokenize, hf_window_logits, score_text

        if self.model is None:
            raise NotLoadedError("No model is loaded.")
        if opts.window > self.plan.n_ctx:
            raise BackendError(f"The quality window ({opts.window} tokens) is longer than the loaded context "
                               f"({self.plan.n_ctx}); load the model with a longer context or use a smaller window.")
        model, device = self.model, self.input_device()
        return score_text(text, opts, lambda t: hf_tokenize(self.tokenizer, model, self._bos_id, t),
                          lambda chunk, first: hf_window_logits(model, device, chunk, first),
                          cancel, ref, self._info.name, keep_top)

    # -- generation ------------------------------------------------------------------------
    def stream_chat(self, messages: list[dict] | str, params: SamplingOptions,
                    cancel: threading.Event, logprobs: Optional[int] = None) -> ChatStream:
        if self.model is None:
            raise NotLoadedError("No model is loaded.")
        refuse_unsupported_sampling(params, "the transformers backend")
        refuse_logprobs(logprobs, "the transformers backend")
        progress = GenerationProgress(started=time.monotonic(), n_ctx=self.plan.n_ctx)
        return ChatStream(self._out_of_memory_reported(self._generate(messages, params, cancel, progress)), progress)

    def _out_of_memory_reported(self, reply: Generator[str, None, GenerationStats]) -> Generator[str, None, GenerationStats]:
        """A CUDA out-of-memory error in a reply becomes a message; the memory it had taken is given back,
        so the model stays usable (a shorter prompt, or the same once other programs free VRAM)."""
        import torch

        try:
            return (yield from reply)
        except torch.cuda.OutOfMemoryError:
            self.decoder.start()  # drop the partial KV cache of this reply
            gc.collect()
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(0)
            raise OutOfMemoryError(
                f"The GPU ran out of memory during this reply ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free "
                "now). The model is still loaded: try a shorter conversation, or close other programs that use "
                "the GPU, then send again.") from None

    def tokenize_prompt(self, messages: list[dict] | str) -> list[int]:
        """Messages go through the chat template; a string is a raw completion prompt."""
        if not isinstance(messages, str):
            # Only the template's own text may produce special tokens, never a user's (issue 13).
            return tokenize_chat(self._render, messages, self._tokenize, self._bos_id is not None, self._bos_text)
        add_bos = self._bos_id is not None and not (self._bos_text and messages.startswith(self._bos_text))
        return self._tokenize(messages, add_bos, True)

    def _tokenize(self, text: str, add_bos: bool, parse_special: bool) -> list[int]:
        # split_special_tokens: "<|im_start|>" in the text becomes ordinary pieces, not the control token.
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=not parse_special).input_ids
        return ([self._bos_id] if add_bos else []) + list(ids)

    def _render(self, messages: list[dict]) -> str:
        try:
            return render_prompt(render_chat_template, self._template.text, messages,
                                 bos_token=self._bos_text, eos_token=self.tokenizer.eos_token or "")
        except TemplateRenderError as exc:
            raise TemplateError(str(exc)) from None

    def _decode_text(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _generate(self, messages: list[dict] | str, params: SamplingOptions, cancel: threading.Event,
                  progress: GenerationProgress) -> Generator[str, None, GenerationStats]:
        from backends.hf_decode import PENALTY_LAST_N, Sampler

        tokens = self.tokenize_prompt(messages)
        progress.prompt_tokens = len(tokens)
        n_ctx, n_batch, decoder = self.plan.n_ctx, self.plan.options.n_batch, self.decoder
        check_prompt_fits(len(tokens), n_ctx)
        decoder.start()
        state = {"pos": 0, "logits": None}
        for i in range(0, len(tokens), n_batch):
            if cancel.is_set():
                return reply_stats(progress.started, len(tokens), n_ctx, "cancelled")
            state["logits"] = decoder.forward(tokens[i: i + n_batch], i)
        state["pos"] = len(tokens)

        sampler = Sampler(params, state["logits"].device,
                          params.seed if params.seed is not None else random.randrange(2**32 - 1))
        recent = deque(tokens[-PENALTY_LAST_N:], maxlen=PENALTY_LAST_N)
        text = IncrementalDetokenizer(self._decode_text)

        def advance(token: int) -> None:
            recent.append(token)
            state["logits"] = decoder.forward([token], state["pos"])
            state["pos"] += 1

        step = Decoding(sample=lambda: sampler(state["logits"], recent), is_end=self._eos_ids.__contains__,
                        text=text.push, flush=text.flush, advance=advance,
                        context_full=lambda: state["pos"] + 1 >= n_ctx)
        return (yield from stream_reply(step, params, self._template.stop, cancel, progress, len(tokens), n_ctx,
                                       think=ReasoningCounter.for_reply_to(messages)))
