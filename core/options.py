"""Load and sampling options: one pydantic declaration drives validation, the CLI and the UI.

Every field carries its range (``ge``/``le``) and a description. ``json_schema_extra`` may add
``cli`` (the flag name) and ``step`` (the UI slider step). NaN and infinities are rejected.
"""
from __future__ import annotations

import json
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

KVType = Literal["auto", "f16", "q8_0", "q4_0"]
KV_TYPES: tuple[str, ...] = ("f16", "q8_0", "q4_0")  # what a KV cache is; "auto" lets the planner choose
SplitModeOption = Literal["auto", "layer", "row", "none"]
MAX_GPUS = 16  # llama.cpp's LLAMA_MAX_DEVICES


def parse_number_list(text: str, what: str = "tensor_split") -> tuple[float, ...]:
    """``"3,1"`` or ``"0.6 0.4"`` -> (3.0, 1.0); ValueError with a readable message otherwise."""
    parts = [p for p in re.split(r"[,\s/]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what} must be numbers separated by commas, e.g. 3,1 (got {text[:40]!r})") from None
    if not values:
        raise ValueError(f"{what} is empty: give one number per GPU, e.g. 3,1")
    return values

MAX_STOP_STRINGS = 8
MAX_PARALLEL = 16  # the most replies a load generates at once
MAX_STOP_LENGTH = 64
MAX_GRAMMAR_CHARS = 32_000


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
        "auto", title="KV cache type",
        description="Element type of the KV cache: f16, q8_0 (half the memory) or q4_0 (a quarter). "
                    "auto = f16 unless a smaller type puts more of the model on the GPU.",
        json_schema_extra={"cli": "--kv"},
    )
    n_cpu_moe: Optional[int] = Field(
        None, ge=0, le=1024, title="Experts in RAM (layers)",
        description="Mixture-of-experts models: keep the routed experts of the first N layers in RAM while "
                    "every layer runs on the GPU (llama.cpp's --n-cpu-moe). Empty = automatic (chosen when "
                    "faster than layer offload); 0 = none. Ignored for dense models.",
        json_schema_extra={"cli": "--n-cpu-moe", "step": 1, "empty": "auto", "suggest": [0]},
    )
    split_mode: SplitModeOption = Field(
        "auto", title="Multi-GPU split",
        description="Several GPUs: layer (whole layers per GPU), row (every matrix cut across the GPUs), "
                    "none (the main GPU alone). auto = the planner's choice. Ignored with one GPU.",
        json_schema_extra={"cli": "--split-mode"},
    )
    tensor_split: Optional[tuple[float, ...]] = Field(
        None, title="Tensor split",
        description="Several GPUs: the share of the model on each, in GPU order, e.g. 3,1. "
                    "Empty = automatic (from each GPU's free memory and speed).",
        json_schema_extra={"cli": "--tensor-split", "empty": "auto", "list": True},
    )
    main_gpu: Optional[int] = Field(
        None, ge=0, le=MAX_GPUS - 1, title="Main GPU",
        description="Several GPUs: with split none the GPU used; with row the GPU holding small tensors "
                    "and results. Empty = automatic (GPU 0 for row).",
        json_schema_extra={"cli": "--main-gpu", "step": 1, "empty": "auto"},
    )

    @field_validator("tensor_split")
    @classmethod
    def _check_tensor_split(cls, value: Optional[tuple[float, ...]]) -> Optional[tuple[float, ...]]:
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_GPUS:
            raise ValueError(f"tensor_split takes 1..{MAX_GPUS} numbers, one per GPU")
        if any(v < 0 or v > 1e6 for v in value) or sum(value) <= 0:
            raise ValueError("tensor_split takes non-negative numbers (up to 1e6) with a sum above 0")
        return value

    kv_placement: Literal["auto", "gpu", "ram"] = Field(
        "auto", title="KV cache placement",
        description="gpu: each layer's KV cache on its device (llama.cpp's default); ram: all of it in RAM with "
                    "attention on the CPU (offload_kqv off), which frees VRAM for more layers; auto: the planner "
                    "keeps it in RAM only when that is predicted faster.",
        json_schema_extra={"cli": "--kv-placement"},
    )

    @field_validator("kv_placement", mode="before")
    @classmethod
    def _none_is_auto(cls, value):
        return "auto" if value is None else value  # presets write "auto" as None

    @property
    def kv_placements(self) -> tuple[str, ...]:
        """The placements the planner may choose from."""
        return ("gpu", "ram") if self.kv_placement == "auto" else (self.kv_placement,)

    @property
    def kv_cache_type(self) -> str:
        """The KV type a load without a plan uses: "auto" is the exact f16."""
        return "f16" if self.kv_type == "auto" else self.kv_type

    parallel: Optional[int] = Field(
        None, ge=1, le=MAX_PARALLEL, title="Parallel replies",
        description="Replies generated at once (continuous batching), each in its own slot of the full context; "
                    "the KV cache grows with it. Empty = chosen by the planner from free memory.",
        json_schema_extra={"cli": "--parallel", "step": 1, "empty": "auto", "suggest": [1, 2, 4, 8]},
    )

    @model_validator(mode="after")
    def _quantized_kv_needs_flash_attention(self) -> "LoadOptions":
        if self.kv_type not in ("f16", "auto") and not self.flash_attn:
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
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, title="Presence penalty",
        description="Penalise tokens that already appeared at all (0 = off; OpenAI's presence_penalty).",
        json_schema_extra={"step": 0.05},
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, title="Frequency penalty",
        description="Penalise tokens by how often they appeared (0 = off; OpenAI's frequency_penalty).",
        json_schema_extra={"step": 0.05},
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

    grammar: str = Field(
        "", max_length=MAX_GRAMMAR_CHARS, title="Grammar (GBNF)",
        description="Only replies this llama.cpp grammar accepts (empty = free text). llama.cpp models only.",
    )
    json_schema: str = Field(
        "", max_length=MAX_GRAMMAR_CHARS, title="JSON schema",
        description="Reply with JSON matching this JSON Schema (empty = free text). llama.cpp models only.",
    )

    @field_validator("json_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if value.strip():
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise ValueError("a JSON Schema must be a JSON object")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> "SamplingOptions":
        if self.grammar.strip() and self.json_schema.strip():
            raise ValueError("give a grammar or a JSON schema, not both")
        return self

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        for s in value:
            if not s or len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"each stop string must be 1..{MAX_STOP_LENGTH} characters")
        return value


def describe_validation_error(exc: ValidationError, what: str = "options",
                              labels: Optional[dict[str, str]] = None) -> str:
    """One readable line per problem, e.g. ``temperature: must be <= 5 (got 9)``; with ``labels``
    (field name -> the label users see) the UI's words instead of field names."""
    parts = []
    for err in exc.errors():
        path = [str(x) for x in err.get("loc", ())]
        labelled = bool(labels and len(path) == 1 and path[0] in labels)
        name = path[0] if path else ""
        if labels and path and path[0] in labels:
            path[0] = labels[path[0]]
        loc = ".".join(path) or what
        msg = err.get("msg", "invalid")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
        plain = _plain_words(err, name) if labelled else None
        parts.append(f"{loc} {plain}{got}" if plain else f"{loc}: {msg}{got}")
    return f"Invalid {what}: " + "; ".join(parts)


_BOUNDS = {"greater_than_equal": ("ge", "must be at least"), "less_than_equal": ("le", "must be at most"),
           "greater_than": ("gt", "must be more than"), "less_than": ("lt", "must be less than")}


def _plain_words(err: dict, name: str) -> Optional[str]:
    """A range or type error in the words a form uses ("must be at least 128"), a validator's own
    sentence without the field's name, else None."""
    kind = err.get("type", "")
    if kind == "value_error":
        text = str(err.get("msg", "")).removeprefix("Value error, ")
        return text.removeprefix(f"{name} ") if text.startswith(f"{name} ") else None
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        bound = (err.get("ctx") or {}).get(key)
        if isinstance(bound, (int, float)):
            return f"{words} {bound:,}" if isinstance(bound, int) else f"{words} {bound:g}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    return None


def parse_file_model(model: type[BaseModel], data: object, source: str, error: type[ValueError]) -> BaseModel:
    """Validate a file's parsed content into ``model``; ``error`` names the file and each bad field."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model(**data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()]
        raise error(f"{source}: " + "; ".join(problems)) from None


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
            "list": bool(extra.get("list")),  # a list of numbers, written "3,1"
        })
    return specs


HfQuantization = Literal["nf4", "int8", "gptq", "bf16", "fp16"]
HF_QUANTIZATIONS: tuple[str, ...] = ("nf4", "int8", "gptq", "bf16", "fp16")
MAX_SKIP_MODULES = 16
_MODULE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"


class TransformersLoadOptions(_Options):
    """How a safetensors model is loaded (transformers backend)."""

    quantization: HfQuantization = Field(
        "nf4", title="Quantisation",
        description="nf4 (bitsandbytes 4-bit), int8 (bitsandbytes 8-bit), gptq (a pre-quantised GPTQ "
                    "checkpoint), or bf16 / fp16 unquantised.",
        json_schema_extra={"cli": "--hf-quant"},
    )
    compute_dtype: Literal["auto", "bf16", "fp16"] = Field(
        "auto", title="Compute dtype",
        description="dtype of the matmuls and of unquantised modules. auto = bf16 on GPUs of compute "
                    "capability 8.0+ and on CPU, else fp16. Ignored for bf16/fp16 quantisation.",
        json_schema_extra={"cli": "--hf-compute-dtype"},
    )
    double_quant: bool = Field(
        True, title="Double quantisation",
        description="NF4 only: quantise the quantisation constants too (about 0.4 bits per weight saved).",
        json_schema_extra={"cli": "--hf-double-quant"},
    )
    n_ctx: Optional[int] = Field(
        None, ge=128, le=1 << 20, title="Context (tokens)",
        description="Context window in tokens. Empty = min(4096, the model's trained context).",
        json_schema_extra={"cli": "--hf-ctx", "step": 128, "empty": "auto"},
    )
    gpu_memory_gib: Optional[float] = Field(
        None, ge=0.0, le=4096.0, title="GPU budget (GiB)",
        description="Most GPU memory the model may take; modules that do not fit stay in CPU RAM "
                    "(accelerate offload). Empty = free VRAM less a margin; 0 = CPU only.",
        json_schema_extra={"cli": "--hf-gpu-gib", "step": 0.5, "empty": "auto"},
    )
    cpu_memory_gib: Optional[float] = Field(
        None, ge=0.0, le=65536.0, title="CPU budget (GiB)",
        description="Most host RAM the offloaded modules may take. Empty = no limit.",
        json_schema_extra={"cli": "--hf-cpu-gib", "step": 1, "empty": "none"},
    )
    skip_modules: tuple[str, ...] = Field(
        (), title="Keep unquantised",
        description=f"nf4/int8: up to {MAX_SKIP_MODULES} module names kept out of quantisation "
                    "(e.g. lm_head, mlp.down_proj); the output head always is.",
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", title="Attention",
        description="auto = flash_attention_2 when installed and the dtype allows it, else sdpa.",
        json_schema_extra={"cli": "--hf-attn"},
    )
    compile: bool = Field(
        False, title="Static cache + torch.compile",
        description="Faster decode for a model entirely on one device (meant for GPUs); compiles at "
                    "load (a minute or more) and allocates the KV cache for the whole context.",
        json_schema_extra={"cli": "--hf-compile"},
    )
    n_threads: Optional[int] = Field(
        None, ge=1, le=512, title="CPU threads",
        description="torch threads for CPU work. Empty = all physical cores.",
        json_schema_extra={"cli": "--hf-threads", "step": 1, "empty": "auto"},
    )
    n_batch: int = Field(
        512, ge=16, le=8192, title="Batch size",
        description="Prompt tokens processed per step; Stop is checked between steps.",
        json_schema_extra={"cli": "--hf-batch", "step": 16},
    )

    @field_validator("skip_modules")
    @classmethod
    def _check_skip_modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_SKIP_MODULES:
            raise ValueError(f"at most {MAX_SKIP_MODULES} module names")
        for name in value:
            if len(name) > 100 or not re.match(_MODULE_NAME, name):
                raise ValueError(f"{name[:40]!r} is not a module name like 'lm_head' or 'mlp.down_proj'")
        return value

    @model_validator(mode="after")
    def _skip_modules_need_bitsandbytes(self) -> "TransformersLoadOptions":
        if self.skip_modules and self.quantization not in ("nf4", "int8"):
            raise ValueError("skip_modules applies to nf4 and int8 only")
        return self


class RemoteLoadOptions(_Options):
    """Which remote OpenAI-compatible engine serves the model (remote backend)."""

    endpoint: str = Field(
        "", title="Endpoint", max_length=40,
        description="Name of a remote endpoint added by an admin (Models tab or --remote).",
    )
    n_ctx: Optional[int] = Field(
        None, ge=128, le=1 << 22, title="Context (tokens)",
        description="The server's context length if it does not report one (shown in the chat's "
                    "context meter). Empty = as the server reports, else unknown.",
        json_schema_extra={"step": 128, "empty": "auto"},
    )
    timeout_s: float = Field(
        120.0, ge=1.0, le=3600.0, title="Reply timeout (s)",
        description="Longest wait for the server's first or next streamed token before the reply "
                    "is given up with a timeout message.",
        json_schema_extra={"step": 1},
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$", value):
            raise ValueError("an endpoint name is letters, digits, '.', '_' or '-'")
        return value


LOAD_OPTIONS_BY_BACKEND: dict[str, type[_Options]] = {
    "llama_cpp": LoadOptions, "transformers": TransformersLoadOptions, "remote": RemoteLoadOptions}
