"""Load and sampling options: one pydantic declaration drives validation, the CLI and the UI.

Every field carries its range (``ge``/``le``) and a description. ``json_schema_extra`` may add
``cli`` (the flag name) and ``step`` (the UI slider step). NaN and infinities are rejected.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

KVType = Literal["f16", "q8_0", "q4_0"]
KV_TYPES: tuple[str, ...] = ("f16", "q8_0", "q4_0")

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 64


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, validate_default=True)


class LoadOptions(_Options):
    """How a model is loaded (llama.cpp backend)."""

    n_ctx: Optional[int] = Field(
        None, ge=128, le=1 << 20, title="Context (tokens)",
        description="Context window in tokens. Empty = min(4096, the model's trained context).",
        json_schema_extra={"cli": "--ctx", "step": 128, "empty": "auto",
                           "suggest": [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]},
    )
    n_gpu_layers: Optional[int] = Field(
        None, ge=-1, le=1024, title="GPU layers",
        description="Layers offloaded to the GPU (-1 = all). Empty = automatic.",
        json_schema_extra={"cli": "--n-gpu-layers", "step": 1, "empty": "auto", "suggest": [-1, 0]},
    )
    n_threads: Optional[int] = Field(
        None, ge=1, le=512, title="CPU threads",
        description="Threads for generation. Empty = all physical cores.",
        json_schema_extra={"cli": "--threads", "step": 1, "empty": "auto"},
    )
    n_batch: int = Field(
        512, ge=16, le=8192, title="Batch size",
        description="Prompt tokens processed per step; Stop is checked between steps.",
        json_schema_extra={"cli": "--batch", "step": 16},
    )
    flash_attn: bool = Field(
        True, title="Flash attention",
        description="Faster decode and less memory; required for a quantised V cache.",
        json_schema_extra={"cli": "--flash-attn"},
    )
    kv_type: KVType = Field(
        "f16", title="KV cache type",
        description="Element type of the KV cache: f16, q8_0 (half the memory) or q4_0 (a quarter).",
        json_schema_extra={"cli": "--kv"},
    )

    @model_validator(mode="after")
    def _quantized_kv_needs_flash_attention(self) -> "LoadOptions":
        if self.kv_type != "f16" and not self.flash_attn:
            raise ValueError(f"KV cache type {self.kv_type} needs flash attention on")
        return self


class SamplingOptions(_Options):
    """How a reply is sampled."""

    temperature: float = Field(
        0.7, ge=0.0, le=5.0, title="Temperature",
        description="Randomness; 0 always picks the most likely token.",
        json_schema_extra={"step": 0.05},
    )
    top_p: float = Field(
        0.95, gt=0.0, le=1.0, title="Top-p",
        description="Keep the smallest set of tokens whose probabilities add up to this.",
        json_schema_extra={"step": 0.01},
    )
    top_k: int = Field(
        40, ge=0, le=1000, title="Top-k",
        description="Keep only the k most likely tokens (0 = off).",
        json_schema_extra={"step": 1},
    )
    min_p: float = Field(
        0.05, ge=0.0, le=1.0, title="Min-p",
        description="Drop tokens less likely than this fraction of the top token.",
        json_schema_extra={"step": 0.01},
    )
    repeat_penalty: float = Field(
        1.1, ge=0.5, le=2.0, title="Repeat penalty",
        description="Penalise recently used tokens (1 = off).",
        json_schema_extra={"step": 0.01},
    )
    max_tokens: int = Field(
        1024, ge=1, le=131072, title="Max new tokens",
        description="Longest reply in tokens; the reply also ends when the context is full.",
        json_schema_extra={"step": 1},
    )
    seed: Optional[int] = Field(
        None, ge=0, le=2**32 - 2, title="Seed",
        description="Fixed seed for repeatable replies. Empty = random.",
        json_schema_extra={"step": 1, "empty": "random"},
    )
    stop: tuple[str, ...] = Field(
        (), title="Stop strings",
        description=f"Up to {MAX_STOP_STRINGS} strings that end the reply.",
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        for s in value:
            if not s or len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"each stop string must be 1..{MAX_STOP_LENGTH} characters")
        return value


def describe_validation_error(exc: ValidationError, what: str = "options") -> str:
    """One readable line per problem, e.g. ``temperature: must be <= 5 (got 9)``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or what
        msg = err.get("msg", "invalid")
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{loc}: {msg}")
    return f"Invalid {what}: " + "; ".join(parts)


def field_specs(model: type[BaseModel]) -> list[dict]:
    """Flatten a model's fields into what a UI or CLI builder needs (name, type, range, default)."""
    specs = []
    for name, info in model.model_fields.items():
        lo = hi = None
        exclusive_lo = False
        for meta in info.metadata:
            lo = getattr(meta, "ge", lo)
            if getattr(meta, "gt", None) is not None:
                lo, exclusive_lo = meta.gt, True
            hi = getattr(meta, "le", hi)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        specs.append({
            "name": name,
            "title": info.title or name,
            "description": info.description or "",
            "default": info.default,
            "annotation": info.annotation,
            "min": lo,
            "max": hi,
            "exclusive_min": exclusive_lo,
            "step": extra.get("step"),
            "cli": extra.get("cli"),
            "empty": extra.get("empty"),  # how the UI names "no value" (None) for optional fields
            "suggest": tuple(extra.get("suggest", ())),
        })
    return specs
