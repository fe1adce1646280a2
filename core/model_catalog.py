"""The allow-list of models a user may load. Clients send a name; only names in the catalog map
to paths, so a name can never become an arbitrary path."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Literal, Optional

Source = Literal["embedded", "command-line", "library"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    source: Source
    size_bytes: int = 0
    backend: str = "llama_cpp"  # "transformers" for a safetensors model folder


class UnknownModelError(LookupError):
    pass


@dataclass(frozen=True)
class ModelCatalog:
    entries: tuple[ModelEntry, ...]

    @classmethod
    def build(cls, entries: Iterable[ModelEntry]) -> "ModelCatalog":
        """Drop entries whose path is already listed; make names unique by suffixing ``(2)``..."""
        seen_paths: set[str] = set()
        names: set[str] = set()
        out = []
        for entry in entries:
            if entry.path in seen_paths:
                continue
            seen_paths.add(entry.path)
            name, n = entry.name, 2
            while name in names:
                name, n = f"{entry.name} ({n})", n + 1
            names.add(name)
            out.append(replace(entry, name=name))
        return cls(tuple(out))

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: object) -> ModelEntry:
        if not isinstance(name, str):
            raise UnknownModelError("Pick a model from the list.")
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise UnknownModelError(f"Unknown model {name[:80]!r}: pick one from the list.")

    def find_path(self, path: str) -> Optional[ModelEntry]:
        return next((e for e in self.entries if e.path == path), None)
