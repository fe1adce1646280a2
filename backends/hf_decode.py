"""Token-by-token decoding of a transformers model: sampling, and two KV-cache strategies.

* ``EagerDecoder``: a DynamicCache and plain forwards; works everywhere, offloaded models included.
* ``StaticDecoder``: a StaticCache sized for the whole context and the single-token step compiled
  with ``torch.compile`` (CUDA graphs on a GPU: decode at batch 1 is launch-bound, and replaying a
  graph removes the per-kernel launch cost). For a model that sits entirely on one device.

Only imported inside the model worker (it imports torch).
"""
from __future__ import annotations

import inspect
import sys
import time
from typing import Optional, Sequence

import torch

from core.options import SamplingOptions

PENALTY_LAST_N = 64  # llama.cpp's default window for the repeat penalty


class Sampler:
    """llama.cpp's chain, so both backends read the options alike: repeat penalty over the last 64
    tokens, then greedy (temperature 0) or top-k, top-p, min-p, temperature and a seeded draw."""

    def __init__(self, params: SamplingOptions, device: torch.device, seed: int) -> None:
        self.p = params
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, recent: Sequence[int]) -> int:
        p = self.p
        logits = logits.to(torch.float32, copy=True)
        if p.repeat_penalty != 1.0 and recent:
            idx = torch.tensor(sorted(set(recent)), device=logits.device)
            vals = logits[idx]
            logits[idx] = torch.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        if p.temperature <= 0.0:
            return int(torch.argmax(logits))
        if 0 < p.top_k < logits.numel():
            values, ids = torch.topk(logits, p.top_k)
        else:
            values, ids = torch.sort(logits, descending=True)
        probs = torch.softmax(values, dim=-1)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if p.top_p < 1.0:
            keep &= (torch.cumsum(probs, dim=-1) - probs) < p.top_p
        if p.min_p > 0.0:
            keep &= probs >= p.min_p * probs[0]
        keep[0] = True
        values, ids = values[keep], ids[keep]
        choice = torch.multinomial(torch.softmax(values / p.temperature, dim=-1), 1, generator=self.generator)
        return int(ids[choice])


def _forward_kwargs(model) -> dict:
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


class EagerDecoder:
    name = "eager"

    def __init__(self, model, device: torch.device) -> None:
        self.model, self.device = model, device
        self._extra = _forward_kwargs(model)
        self.cache = None

    def start(self) -> None:
        from transformers import DynamicCache

        try:
            self.cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers before 4.56
            self.cache = DynamicCache()

    def forward(self, ids: Sequence[int], pos: int) -> torch.Tensor:
        """Evaluate ``ids`` at positions ``pos..``; the logits of the last one (fp32, a copy)."""
        with torch.no_grad():
            inputs = torch.tensor([list(ids)], device=self.device)
            positions = torch.arange(pos, pos + len(ids), device=self.device)
            out = self.model(input_ids=inputs, past_key_values=self.cache, cache_position=positions,
                             use_cache=True, **self._extra)
            return out.logits[0, -1].to(torch.float32, copy=True)

    def release(self) -> None:
        self.cache = None

    def kv_bytes(self) -> int:
        return 0


def make_static_cache(model, max_len: int, device: torch.device, dtype: torch.dtype):
    from transformers import StaticCache

    wanted = {"config": model.config, "max_cache_len": max_len, "max_batch_size": 1, "device": device,
              "dtype": dtype}
    accepted = inspect.signature(StaticCache.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in wanted.items() if k in ("config", "max_cache_len")}
        kwargs.update({k: v for k, v in wanted.items() if k in accepted})
    else:
        kwargs = {k: v for k, v in wanted.items() if k in accepted}
    return StaticCache(**kwargs)


class StaticDecoder:
    """Prompt chunks run eagerly on the static cache; single-token steps run the compiled graph."""

    def __init__(self, model, device: torch.device, n_ctx: int, dtype: torch.dtype, compile: bool = True) -> None:
        self.model, self.device = model, device
        self.cache = make_static_cache(model, n_ctx, device, dtype)
        self._extra = _forward_kwargs(model)
        self._cuda = device.type == "cuda"
        self.name = "static"
        self.compile_seconds = 0.0
        self.compile_error: Optional[str] = None
        self._step = self._decode_step
        if compile:
            self._step = self._compile()

    def _decode_step(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=inputs, past_key_values=self.cache, cache_position=positions,
                          use_cache=True).logits

    def _compile(self):
        """Compile and warm up now (not on the first chat). fullgraph first: a graph break would
        split the CUDA graph; if it fails, allow breaks; if that fails too, stay eager and say why."""
        mode = "reduce-overhead" if self._cuda else None
        for fullgraph in (True, False):
            started = time.monotonic()
            torch._dynamo.reset()
            step = torch.compile(self._decode_step, mode=mode, fullgraph=fullgraph, dynamic=False)
            try:
                self._warm_up(step)
            except Exception as exc:  # torch.compile raises many kinds; we report and fall back
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                print(f"torch.compile (fullgraph={fullgraph}) failed: {self.compile_error}", file=sys.stderr)
                continue
            self.compile_seconds = time.monotonic() - started
            self.name = "compiled" + ("" if fullgraph else " (graph breaks)")
            self.compile_error = None
            return step
        torch._dynamo.reset()
        self.name = "static (compile failed)"
        return self._decode_step

    def _warm_up(self, step) -> None:
        self.start()
        self.forward([0, 1, 2, 3], 0, step)
        for pos in range(4, 8):  # CUDA graphs record on the second or third call of a shape
            self.forward([1], pos, step)
        self.start()

    def start(self) -> None:
        self.cache.reset()

    def forward(self, ids: Sequence[int], pos: int, step=None) -> torch.Tensor:
        with torch.no_grad():
            inputs = torch.tensor([list(ids)], device=self.device)
            positions = torch.arange(pos, pos + len(ids), device=self.device)
            if len(ids) > 1:
                out = self.model(input_ids=inputs, past_key_values=self.cache, cache_position=positions,
                                 use_cache=True, **self._extra)
                return out.logits[0, -1].to(torch.float32, copy=True)
            if self._cuda:
                torch.compiler.cudagraph_mark_step_begin()
            # The graph's output buffer is reused by the next replay: copy it out now.
            return (step or self._step)(inputs, positions)[0, -1].to(torch.float32, copy=True)

    def release(self) -> None:
        self.cache = None
        self._step = None
        torch._dynamo.reset()

    def kv_bytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", ()):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        for name in ("key_cache", "value_cache"):  # transformers 4.x
            for t in getattr(self.cache, name, None) or ():
                total += t.numel() * t.element_size()
        return total
