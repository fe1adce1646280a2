"""The admin's list of remote engines, kept in ``DATA_DIR/remote_endpoints.json``.

The file holds API keys, so it is created owner-only (0600) and rewritten atomically; keys leave
this module only through ``get`` (for the backend's Authorization header), never through ``list``.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Optional

from core.remote import MAX_ENDPOINTS, RemoteConfigError, RemoteEndpoint, make_endpoint, validate_name

FILE_NAME = "remote_endpoints.json"


class RemoteEndpointStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._lock = threading.Lock()

    def _read(self) -> dict[str, RemoteEndpoint]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or set(data) != {"endpoints"} or not isinstance(data["endpoints"], list):
                raise ValueError("expected {\"endpoints\": [...]}")
            out = {}
            for item in data["endpoints"][:MAX_ENDPOINTS]:
                if not isinstance(item, dict) or not set(item) <= {"name", "base_url", "api_key"}:
                    raise ValueError("an entry has unknown fields")
                endpoint = make_endpoint(item.get("name"), item.get("base_url"), item.get("api_key"))
                out[endpoint.name] = endpoint
            return out
        except (ValueError, RemoteConfigError) as exc:
            raise RemoteConfigError(f"{self.path} is not a valid endpoint list ({exc}); fix or delete it") from None

    def _write(self, endpoints: dict[str, RemoteEndpoint]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"endpoints": [{"name": e.name, "base_url": e.base_url, "api_key": e.api_key}
                                         for e in endpoints.values()]}, indent=1)
        tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self) -> list[dict]:
        """Name, address and whether a key is set: safe to show."""
        with self._lock:
            return [e.public() for e in self._read().values()]

    def names(self) -> list[str]:
        return [e["name"] for e in self.list()]

    def get(self, name: str) -> Optional[RemoteEndpoint]:
        with self._lock:
            return self._read().get(name)

    def add(self, name: object, url: object, key: object = None, replace: bool = False) -> RemoteEndpoint:
        endpoint = make_endpoint(name, url, key)
        with self._lock:
            endpoints = self._read()
            if endpoint.name in endpoints and not replace:
                raise RemoteConfigError(f"an endpoint named {endpoint.name!r} exists already: remove it first")
            if endpoint.name not in endpoints and len(endpoints) >= MAX_ENDPOINTS:
                raise RemoteConfigError(f"at most {MAX_ENDPOINTS} endpoints")
            endpoints[endpoint.name] = endpoint
            self._write(endpoints)
        return endpoint

    def remove(self, name: object) -> bool:
        name = validate_name(name)
        with self._lock:
            endpoints = self._read()
            if endpoints.pop(name, None) is None:
                return False
            self._write(endpoints)
            return True
