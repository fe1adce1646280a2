"""YAML presets: schema (extra keys rejected, clear messages naming file and field) and ranking.

A preset says which model (a local path, or a Hub repo + file glob), which backend and
quantisation, optional hardware requirements, load options and sampling defaults. ``shape``
describes the model well enough to plan before it is downloaded; once the file is on disk its
own header replaces it.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.hardware import GIB, Hardware
from core.model_shape import ModelShape
from core.options import LOAD_OPTIONS_BY_BACKEND, SamplingOptions, describe_validation_error, parse_file_model
from core.plan import Plan

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
LOAD_OPTION_MODELS: dict[str, type[BaseModel]] = dict(LOAD_OPTIONS_BY_BACKEND)
EMBEDDED_KEY = ":embedded:"
_AUTO_VALUED = {"kv_type"}  # how the library lists the embedded model to match_local


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ModelSource(_Strict):
    embedded: bool = Field(False, description="the model shipped with FitChat (SmolLM2-135M)")
    path: Optional[str] = Field(None, max_length=1024, description="a file in the models folder, or absolute")
    repo: Optional[str] = Field(None, max_length=200, description="Hugging Face repo id, owner/name")
    file: Optional[str] = Field(None, max_length=200, description="file glob in the repo, e.g. *Q4_K_M.gguf")
    id: Optional[str] = Field(None, min_length=1, max_length=200, description="remote: the model id the endpoint serves")

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not REPO_ID.match(value) or ".." in value):
            raise ValueError("must look like owner/name (letters, digits, '-', '_', '.')")
        return value

    @field_validator("file")
    @classmethod
    def _glob(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and ("/" in value or "\\" in value or ".." in value or "\x00" in value):
            raise ValueError("must be a file name or glob without folders")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if sum((bool(self.embedded), bool(self.path), bool(self.repo), bool(self.id))) != 1:
            raise ValueError("give exactly one of: embedded: true, a local path, a Hub repo, or a remote model id")
        return self


class ShapeHint(_Strict):
    """Enough of a model's shape to plan before its header is available."""
    architecture: str = Field("llama", max_length=50)
    n_layer: int = Field(ge=1, le=1000)
    n_embd: int = Field(ge=16, le=131072)
    n_head: int = Field(ge=1, le=1024)
    n_head_kv: int = Field(ge=1, le=1024)
    n_ff: int = Field(ge=16, le=1_000_000)
    n_vocab: int = Field(ge=16, le=4_000_000)
    n_ctx_train: int = Field(ge=128, le=1 << 24)
    file_gib: float = Field(gt=0, le=4096, description="size of the weights file(s)")
    tied_embeddings: bool = False
    head_dim: Optional[int] = Field(None, ge=8, le=1024, description="when not n_embd / n_head")
    # mixture of experts (0 = a dense model)
    n_expert: int = Field(0, ge=0, le=4096)
    n_expert_used: int = Field(0, ge=0, le=4096)
    n_ff_exp: int = Field(0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _experts_agree(self) -> "ShapeHint":
        if self.n_expert and not (1 <= self.n_expert_used <= self.n_expert and self.n_ff_exp):
            raise ValueError("an MoE shape needs 1 <= n_expert_used <= n_expert and n_ff_exp > 0")
        if not self.n_expert and (self.n_expert_used or self.n_ff_exp):
            raise ValueError("n_expert_used and n_ff_exp need n_expert")
        return self


class Requirements(_Strict):
    min_vram_gib: float = Field(0, ge=0, le=4096)
    min_ram_gib: float = Field(0, ge=0, le=65536)


class Preset(_Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=1000)
    backend: Literal["llama_cpp", "transformers", "remote"]
    quantization: str = Field("", max_length=30)
    # remote: ``model: <id>`` (read as ``{id: ...}``) is what ``endpoint``, a stored endpoint's name, serves
    model: ModelSource
    endpoint: Optional[str] = Field(None, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$",
                                    description="remote backend: the name of an endpoint added by an admin")
    shape: Optional[ShapeHint] = None
    requirements: Requirements = Requirements()
    load: dict[str, Any] = Field(default_factory=dict)
    sampling: SamplingOptions = SamplingOptions()

    @field_validator("load", mode="before")
    @classmethod
    def _auto_means_none(cls, value: Any) -> Any:
        if isinstance(value, dict):
            # "auto" is a value of its own for fields that name it (kv_type), else it means empty.
            return {k: (None if v == "auto" and k not in _AUTO_VALUED else v) for k, v in value.items()}
        return value

    @model_validator(mode="before")
    @classmethod
    def _remote_model_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") == "remote" and isinstance(data.get("model"), str):
            return {**data, "model": {"id": data["model"].strip()}}
        return data

    @model_validator(mode="after")
    def _remote_or_local(self) -> "Preset":
        if self.backend == "remote":
            if not self.endpoint or not self.model.id:
                raise ValueError("a remote preset needs endpoint: <a stored endpoint's name> and model: <the id it "
                                 "serves> (1-200 characters)")
            if self.shape is not None or self.requirements != Requirements() or "endpoint" in self.load:
                raise ValueError("a remote preset takes no shape, requirements or load.endpoint (the remote "
                                 "machine runs it)")
        else:
            if self.endpoint is not None or self.model.id is not None:
                raise ValueError(f"endpoint and a model id are for backend: remote; {self.backend} needs model: "
                                 "{embedded, path or repo}")
            if not self.quantization:
                raise ValueError("quantization is required (e.g. Q4_K_M, nf4)")
        return self

    @model_validator(mode="after")
    def _load_options_valid(self) -> "Preset":
        options_model = LOAD_OPTION_MODELS.get(self.backend)
        if options_model is not None:
            self.load_options()  # raises a ValueError naming the bad field
        return self

    def load_options(self) -> BaseModel:
        options_model = LOAD_OPTION_MODELS.get(self.backend)
        if options_model is None:
            raise ValueError(f"the {self.backend} backend is not available in this version")
        try:
            if self.backend == "remote":
                return options_model(endpoint=self.endpoint, **self.load)
            return options_model(**self.load)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, "load options").replace("Invalid load options: ", "load.")) from None


class PresetError(ValueError):
    """A preset file that cannot be used; the message names the file and the field."""


def parse_preset(data: object, source: str) -> Preset:
    return parse_file_model(Preset, data, source, PresetError)


_QUANT_BITS = {"Q2_K": 3.0, "Q3_K_M": 3.9, "Q4_0": 4.55, "Q4_K_S": 4.6, "Q4_K_M": 4.85, "Q5_K_M": 5.7,
               "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0, "BF16": 16.0}


def shape_from_hint(hint: ShapeHint, name: str, quantization: str) -> ModelShape:
    """An approximate ModelShape: the file's bytes spread over embeddings, head and blocks."""
    total = int(hint.file_gib * GIB)
    bits = _QUANT_BITS.get(quantization.upper(), 4.85)
    embd = int(hint.n_vocab * hint.n_embd * bits / 8)
    head = embd if hint.tied_embeddings else int(hint.n_vocab * hint.n_embd * max(bits, 6.56) / 8)
    blocks = max(total - embd - (0 if hint.tied_embeddings else head), hint.n_layer)
    per_block = blocks // hint.n_layer
    head_dim = hint.head_dim or hint.n_embd // hint.n_head
    experts = min(int(hint.n_expert * 3 * hint.n_embd * hint.n_ff_exp * bits / 8), per_block) if hint.n_expert else 0
    return ModelShape(
        name=name, architecture=hint.architecture, n_layer=hint.n_layer, n_embd=hint.n_embd, n_head=hint.n_head,
        n_head_kv=(hint.n_head_kv,) * hint.n_layer, head_dim_k=head_dim, head_dim_v=head_dim, n_ff=hint.n_ff,
        n_vocab=hint.n_vocab, n_ctx_train=hint.n_ctx_train, block_bytes=(per_block,) * hint.n_layer,
        token_embd_bytes=embd, output_bytes=head, other_bytes=0, output_tied=hint.tied_embeddings,
        quantization=quantization, file_bytes=total, n_expert=hint.n_expert, n_expert_used=hint.n_expert_used,
        n_ff_exp=hint.n_ff_exp, expert_bytes=(experts,) * hint.n_layer if experts else ())


def repo_folder(repo: str) -> str:
    """The folder a Hub repo's files live in, inside the models folder: ``owner--name``."""
    return repo.replace("/", "--")


def match_local(source: ModelSource, library: list[tuple[str, str]], backend: str = "llama_cpp") -> Optional[str]:
    """Find the preset's model among ``(name relative to the models folder, absolute path)``.

    Matching is by name only: the preset never becomes a path by itself. A Hub preset matches only
    what is under its own repository's folder, never a file elsewhere with a similar name; for
    transformers only the model folder itself (a GGUF there is not its model).
    """
    if source.embedded:
        return next((p for rel, p in library if rel == EMBEDDED_KEY), None)
    if source.path:
        wanted = source.path.strip("/")
        for rel, absolute in library:
            if rel == wanted or absolute == source.path:
                return absolute
        return None
    folder = repo_folder(source.repo)
    if backend == "transformers":
        return next((p for rel, p in library if rel == folder), None)
    pattern = source.file or "*.gguf"
    candidates = sorted((rel, p) for rel, p in library if rel.startswith(folder + "/")
                        and fnmatch.fnmatch(rel[len(folder) + 1:], pattern))
    # Split GGUFs: the first shard stands for the model.
    return candidates[0][1] if candidates else None


@dataclass(frozen=True)
class RankedPreset:
    key: str
    preset: Preset
    plan: Optional[Plan]
    local_path: Optional[str]
    exact_shape: bool          # planned from the file's own header (else from the preset's hint)
    problem: str = ""          # why no plan could be made


_FIT_ORDER = {"full_gpu": 0, "partial": 1, "cpu_only": 2, "no_fit": 3}


def rank(entries: list[RankedPreset]) -> list[RankedPreset]:
    """Best first: what fits on the GPU, then partial, CPU only, does not fit, unplannable;
    within a class the faster first."""
    def key(entry: RankedPreset):
        if entry.plan is None:
            return (5, 0.0, entry.preset.name)
        return (_FIT_ORDER[entry.plan.fit], -entry.plan.tokens_per_s, entry.preset.name)
    return sorted(entries, key=key)


def check_requirements(preset: Preset, hw: Hardware) -> list[str]:
    problems = []
    vram = max((g.total_bytes for g in hw.gpus), default=0) / GIB
    if preset.requirements.min_vram_gib and vram < preset.requirements.min_vram_gib:
        have = f"this one has {vram:.1f}" if hw.gpus else "this machine has none"
        problems.append(f"wants a GPU with {preset.requirements.min_vram_gib:g} GiB; {have}")
    ram = hw.ram_total_bytes / GIB
    if preset.requirements.min_ram_gib and ram < preset.requirements.min_ram_gib:
        problems.append(f"wants {preset.requirements.min_ram_gib:g} GiB of RAM; this machine has {ram:.1f}")
    return problems


PlanFn = Callable[[Preset, ModelShape, Hardware], Plan]
