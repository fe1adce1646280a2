"""Files of a Hugging Face Hub repo as plain data: validation of every name the Hub sends, GGUF
files grouped into models (split shards as one), what a transformers download takes, and the
quantisation that fits best. Pure: ``services.hub`` talks to the Hub, ``services.downloads`` writes.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from core.model_shape import split_info
from core.plan import Plan
from core.presets import REPO_ID, repo_folder

SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_OID = re.compile(r"^[0-9a-f]{40}$")
COMMIT = GIT_OID
MAX_PATH_CHARS = 512
_DRIVE = re.compile(r"^[A-Za-z]:")
_QUANT = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:UD-)?(?:IQ\d_(?:XXS|XS|NL|S|M)|I?Q\d_K(?:_(?:XL|S|M|L))?|Q\d_\d(?:_\d_\d)?|"
    r"TQ\d_0|MXFP4|BF16|FP16|F16|FP32|F32))(?![A-Za-z0-9])")
# Files a transformers model needs besides its weights; nothing else is fetched (no code, no pickles).
TRANSFORMERS_EXTRAS = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "model.safetensors.index.json"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class HubNameError(ValueError):
    """A repo id, file name or pattern that is refused; the message is for the user."""


def check_repo_id(value: object) -> str:
    """``owner/name`` with letters, digits, '-', '_', '.'; no '..'."""
    if not isinstance(value, str):
        raise HubNameError("Give a repository as owner/name.")
    text = value.strip()
    if not REPO_ID.match(text) or ".." in text:
        raise HubNameError(f"{text[:100]!r} is not a repository id: use owner/name (letters, digits, '-', '_', '.').")
    return text


def check_hub_path(name: object) -> str:
    """A file name from the Hub, refused unless it is a plain relative path: no '..', '.', empty,
    absolute, drive (C:), UNC or backslash parts, no control characters or colons."""
    if not isinstance(name, str) or not name:
        raise HubNameError("a file name from the Hub is empty or not text")
    shown = repr(name[:80])
    if len(name) > MAX_PATH_CHARS:
        raise HubNameError(f"file name {shown} is longer than {MAX_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise HubNameError(f"file name {shown} contains control characters")
    if "\\" in name or ":" in name or _DRIVE.match(name):
        raise HubNameError(f"file name {shown} has a backslash, drive or colon in it")
    if name.startswith("/"):
        raise HubNameError(f"file name {shown} is absolute")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise HubNameError(f"file name {shown} has an empty, '.' or '..' part")
    return name


def local_name(hub_path: str) -> str:
    """The name a Hub file gets in the model's folder: its last part (GGUF shards are kept flat)."""
    base = check_hub_path(hub_path).rsplit("/", 1)[-1]
    if base.startswith("."):
        raise HubNameError(f"file name {base[:80]!r} is hidden")
    return base


def check_glob(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HubNameError("--file needs a file name or glob, e.g. '*Q4_K_M*.gguf'")
    text = value.strip()
    if len(text) > 200 or any(c in text for c in "/\\\x00") or ".." in text:
        raise HubNameError(f"--file {text[:80]!r} must be a file name or glob without folders or '..'")
    return text


def check_query(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HubNameError("The search text must be text.")
    text = " ".join(value.split())
    if len(text) > 100 or any(ord(c) < 32 for c in text):
        raise HubNameError("The search text must be at most 100 printable characters.")
    return text


@dataclass(frozen=True)
class HubFile:
    path: str          # in the repo, checked by check_hub_path
    size: int
    sha256: str = ""   # the LFS object id: what a large file is verified against
    git_oid: str = ""  # the git blob id: what a small (non-LFS) file is verified against

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def hub_file(path: object, size: object, sha256: object = None, git_oid: object = None) -> HubFile:
    """A HubFile from the Hub's listing, every field checked (HubNameError when refused)."""
    name = check_hub_path(path)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise HubNameError(f"file {name[:80]!r} has no valid size")
    sha = sha256.lower() if isinstance(sha256, str) else ""
    oid = git_oid.lower() if isinstance(git_oid, str) else ""
    if sha and not SHA256.match(sha) or oid and not GIT_OID.match(oid):
        raise HubNameError(f"file {name[:80]!r} has a malformed digest")
    if not sha and not oid:
        raise HubNameError(f"file {name[:80]!r} has no digest to verify it against")
    return HubFile(name, size, sha, oid)


@dataclass(frozen=True)
class GgufModel:
    """One downloadable GGUF model: a single file, or all shards of a split one."""
    key: str                       # the file name without .gguf (and without -0000N-of-0000M)
    quant: str                     # from the file name, e.g. Q4_K_M ("" when it does not say)
    files: tuple[HubFile, ...]     # shards in order

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def first(self) -> HubFile:
        return self.files[0]


def quant_label(filename: str) -> str:
    stem = filename.rsplit("/", 1)[-1]
    info = split_info(stem)
    stem = info[0] if info else stem.removesuffix(".gguf")
    found = _QUANT.findall(stem)
    return found[-1].upper().replace("FP16", "F16").replace("FP32", "F32") if found else ""


def group_gguf(files: Iterable[HubFile]) -> tuple[list[GgufModel], list[str]]:
    """GGUF models of a repo, smallest first, and notes about files left out (vision projectors,
    incomplete split sets, two files that would get the same local name)."""
    notes: list[str] = []
    singles: list[GgufModel] = []
    splits: dict[tuple[str, str, int], dict[int, HubFile]] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf"):
            continue
        if "mmproj" in f.name.lower():
            notes.append(f"{f.path}: a vision projector, not a chat model on its own")
            continue
        info = split_info(f.name)
        if info is None:
            singles.append(GgufModel(f.path.removesuffix(".gguf"), quant_label(f.name), (f,)))
            continue
        stem, number, count = info
        folder = f.path.rsplit("/", 1)[0] + "/" if "/" in f.path else ""
        splits.setdefault((folder + stem, stem, count), {})[number] = f
    models = list(singles)
    for (key, stem, count), shards in splits.items():
        if sorted(shards) != list(range(1, count + 1)):
            notes.append(f"{key}: only {len(shards)} of {count} shards are in the repo")
            continue
        models.append(GgufModel(key, quant_label(stem + ".gguf"), tuple(shards[i] for i in range(1, count + 1))))
    seen: dict[str, str] = {}
    unique = []
    for model in sorted(models, key=lambda m: (m.size, m.key)):
        names = [f.name for f in model.files]
        clash = next((seen[n] for n in names if n in seen), None)
        if clash:
            notes.append(f"{model.key}: a file has the same name as one of {clash}; left out")
            continue
        seen.update({n: model.key for n in names})
        unique.append(model)
    return unique, notes


def match_files(files: Sequence[HubFile], pattern: str) -> list[HubFile]:
    return [f for f in files if fnmatch.fnmatch(f.name, pattern)]


@dataclass(frozen=True)
class TransformersFiles:
    files: tuple[HubFile, ...]   # what a download fetches: weights, config and tokenizer
    weights: tuple[HubFile, ...]
    refusal: str = ""            # why the repo cannot be used ("" when it can)


def transformers_files(files: Sequence[HubFile], index_shards: Optional[set[str]] = None,
                       repo: str = "") -> TransformersFiles:
    """The safetensors weights (those the index names, when there is one) and the config and tokenizer
    files at the repo's top level. Pickle-only repos are refused: pickles can run code when opened."""
    top = [f for f in files if "/" not in f.path]
    weights = [f for f in top if f.path.endswith(".safetensors")
               and (index_shards is None or f.path in index_shards)]
    extras = [f for f in top if f.path in TRANSFORMERS_EXTRAS]
    who = repo or "This repo"
    if not weights:
        pickles = sorted(f.path for f in top if f.path.endswith(PICKLE_SUFFIXES))
        if pickles:
            why = (f"{who} has only pickle weights ({', '.join(pickles[:3])}). FitChat downloads only safetensors: "
                   "pickle files can run code when they are opened. Look for the model's safetensors version.")
        else:
            why = f"{who} has no safetensors weights at its top level."
        return TransformersFiles((), (), why)
    if not any(f.path == "config.json" for f in extras):
        return TransformersFiles((), (), f"{who} has no config.json: it is not a transformers model.")
    if index_shards is not None and len(weights) != len(index_shards):
        return TransformersFiles((), (), f"{who}: the safetensors index names shards that are not in the repo.")
    return TransformersFiles(tuple(extras + weights), tuple(weights))


def target_folder(repo: str) -> str:
    """The folder of a repo's files inside the models folder (``owner--name``), as presets expect."""
    return repo_folder(check_repo_id(repo))


_FIT_RANK = {"full_gpu": 0, "partial": 1, "cpu_only": 2}


def choose_best(options: Sequence[tuple[str, Optional[Plan], int]], min_speed_share: float = 0.5) -> Optional[str]:
    """The option to pre-select among ``(key, plan, size in bytes)``: of those that fit, the best fit
    class (all on the GPU, then partial, then CPU only); within it the largest file (the highest
    quality) that keeps at least ``min_speed_share`` of the fastest one's predicted speed."""
    fitting = [(k, p, s) for k, p, s in options if p is not None and p.fit in _FIT_RANK]
    if not fitting:
        return None
    best_class = min(_FIT_RANK[p.fit] for _, p, _ in fitting)
    same = [(k, p, s) for k, p, s in fitting if _FIT_RANK[p.fit] == best_class]
    fastest = max(p.tokens_per_s for _, p, _ in same)
    quick = [(k, p, s) for k, p, s in same if p.tokens_per_s >= min_speed_share * fastest] or same
    return max(quick, key=lambda o: (o[2], o[1].tokens_per_s))[0]


def disk_space_problem(needed: int, free: int, margin: int, where: str) -> str:
    """'' when ``free`` holds ``needed`` plus ``margin``; else the message for the user."""
    if free >= needed + margin:
        return ""
    return (f"Not enough disk space in {where}: the download needs {format_bytes(needed)} plus a "
            f"{format_bytes(margin)} margin, and {format_bytes(free)} is free. Free some space (or delete "
            "models from the library) and try again; nothing was downloaded.")


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}" if unit == "GiB" else f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"
