"""The Hugging Face Hub through huggingface_hub: search, a repo's files with their sizes and digests,
and header-only reads (HTTP range requests, capped) of GGUF and safetensors files.

The endpoint is ``HF_ENDPOINT`` (or the one given), the token the user's own (``HF_TOKEN`` or
``hf auth login``), resolved by huggingface_hub and never logged or shown. Offline
(``HF_HUB_OFFLINE=1``) every call fails at once with a plain message.
"""
from __future__ import annotations

import contextlib
import json
import struct
import tempfile
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional, Union

import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RemoteEntryNotFoundError,
                                    RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from core.gguf_header import GGUFError, Limits, parse_header
from core.hub_files import (COMMIT, GgufModel, HubFile, HubNameError, TransformersFiles, check_repo_id, hub_file,
                            transformers_files)
from core.model_shape import ModelShape, shape_from_headers
from services.hf_repo import INDEX_FILE, HfRepo, RepoError, inspect_repo

HEADER_CAP_BYTES = 16 << 20     # most bytes read from the start of one weights file to plan it
JSON_CAP_BYTES = 4 << 20        # config.json, tokenizer_config.json, the safetensors index
FIRST_READ_BYTES = 256 << 10    # first range request of a safetensors header
Format = Literal["gguf", "safetensors"]


class HubError(Exception):
    """The Hub could not answer; the message is for the user (it never holds the token)."""


@contextlib.contextmanager
def hub_errors(repo: str = "", endpoint: str = "") -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into a HubError with a plain message."""
    what = repo or "the Hub"
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError("Hub access is off (HF_HUB_OFFLINE=1): the local library works; search and download "
                       "need the Hub.") from None
    except GatedRepoError:
        raise HubError(f"{what} is gated: accept its conditions on its Hub page, then give FitChat your token "
                       "(run `hf auth login`, or set HF_TOKEN and restart FitChat) and try again.") from None
    except RepositoryNotFoundError:
        raise HubError(f"{what} was not found on the Hub (or it is private and your token cannot see it).") from None
    except (RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        raise HubError(f"A file of {what} is not on the Hub any more ({type(exc).__name__}): open it again.") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise HubError(f"The Hub answered HTTP {status} for {what}. Try again later.") from None
    except (httpx2.HTTPError, ConnectionError, TimeoutError) as exc:
        raise HubError(f"Cannot reach the Hub at {endpoint or 'its address'}: {type(exc).__name__}. "
                       "Check the network (or HF_ENDPOINT).") from None


@dataclass(frozen=True)
class RepoSummary:
    repo: str
    downloads: int = 0
    likes: int = 0
    gated: bool = False
    updated: str = ""        # ISO date of the last change


@dataclass(frozen=True)
class RepoListing:
    repo: str
    revision: str                    # the commit every later read and download is pinned to
    files: tuple[HubFile, ...]
    refused: tuple[str, ...] = ()    # file names (or entries) that failed the checks, with why
    gated: bool = False
    tags: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if any(f.path.lower().endswith(".gguf") for f in self.files):
            return "gguf"
        if any(f.path in ("config.json", "model.safetensors.index.json") or f.path.endswith(".safetensors")
               for f in self.files):
            return "transformers"
        return "other"


def _revision(sha: object) -> str:
    return sha if isinstance(sha, str) and COMMIT.match(sha) else "main"


UNREACHABLE_MEMORY_S = 60.0  # a Hub found unreachable is answered from memory this long
CONNECT_PROBE_S = 3.0        # one TCP connect before a search: a refused or unroutable Hub fails in seconds


class HubClient:
    """One Hub endpoint. ``bytes_fetched`` counts the bytes of every range read (headers, JSON); the
    planning calls also say how many bytes they read themselves (counted per thread)."""

    def __init__(self, endpoint: Optional[str] = None, token: Union[str, bool, None] = None,
                 header_cap: int = HEADER_CAP_BYTES, timeout: float = 30.0) -> None:
        self._api = HfApi(endpoint=endpoint, token=token)
        self.token = token  # None: the user's own (HF_TOKEN or `hf auth login`); False: none
        self.endpoint = self._api.endpoint
        self.header_cap = header_cap
        self.timeout = timeout
        self._lock = threading.Lock()
        self._thread = threading.local()
        self.bytes_fetched = 0
        self._unreachable: Optional[tuple[float, str]] = None  # (when, message)

    def _check_reachable(self) -> None:
        """Fail fast when the Hub cannot be reached (huggingface_hub retries for ~20 s first), and
        remember it for a minute. Behind a proxy the probe is left to the proxy."""
        now = time.monotonic()
        if self._unreachable is not None and now - self._unreachable[0] < UNREACHABLE_MEMORY_S:
            ago = now - self._unreachable[0]
            raise HubError(f"{self._unreachable[1]} (checked {ago:.0f} s ago; it is tried again after "
                           f"{UNREACHABLE_MEMORY_S:.0f} s).")
        url = urllib.parse.urlsplit(self.endpoint)
        if not url.hostname or urllib.request.getproxies().get(url.scheme):
            return
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=CONNECT_PROBE_S).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            message = f"Cannot reach the Hub at {self.endpoint}: {reason}. Check the network (or HF_ENDPOINT)"
            self._unreachable = (now, message)
            raise HubError(message + ".") from None
        self._unreachable = None

    # -- search and listing ------------------------------------------------------------------------
    def search(self, query: str, fmt: Format, limit: int = 30) -> list[RepoSummary]:
        """Text-generation repos with GGUF or safetensors files, most downloaded first."""
        self._check_reachable()
        with hub_errors(endpoint=self.endpoint):
            found = self._api.list_models(search=query or None, filter=fmt, pipeline_tag="text-generation",
                                          sort="downloads", limit=limit,
                                          expand=["downloads", "likes", "gated", "lastModified"])
            out = []
            for info in found:
                try:
                    repo = check_repo_id(info.id)
                except HubNameError:
                    continue
                updated = info.last_modified.date().isoformat() if info.last_modified else ""
                out.append(RepoSummary(repo, int(info.downloads or 0), int(info.likes or 0), bool(info.gated), updated))
            return out

    def listing(self, repo: str) -> RepoListing:
        """The repo's files with sizes and digests (LFS sha256 or git oid); bad names are refused."""
        repo = check_repo_id(repo)
        self._check_reachable()
        with hub_errors(repo, self.endpoint):
            info = self._api.model_info(repo, files_metadata=True)
        files, refused = [], []
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            try:
                files.append(hub_file(sibling.rfilename, lfs.size if lfs else sibling.size,
                                      lfs.sha256 if lfs else None, None if lfs else sibling.blob_id))
            except HubNameError as exc:
                refused.append(str(exc))
        return RepoListing(repo, _revision(info.sha), tuple(files), tuple(refused), bool(info.gated),
                           tuple(str(t) for t in info.tags or ())[:50])

    # -- header-only reads -------------------------------------------------------------------------
    def read_range(self, repo: str, revision: str, path: str, start: int, length: int) -> bytes:
        """Bytes ``start .. start+length-1`` of a file: one Range request, and never more than
        ``length`` bytes read even from a server that ignores the Range header."""
        if length <= 0:
            return b""
        url = hf_hub_url(repo, path, revision=revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        headers["Range"] = f"bytes={start}-{start + length - 1}"
        out = bytearray()
        with hub_errors(repo, self.endpoint):
            with get_session().stream("GET", url, headers=headers, timeout=self.timeout) as response:
                hf_raise_for_status(response)
                if response.status_code != 206 and start > 0:
                    raise HubError(f"The Hub did not answer a range request for {path}; not reading the whole file.")
                for chunk in response.iter_bytes():
                    out += chunk[: length - len(out)]
                    if len(out) >= length:
                        break
        with self._lock:
            self.bytes_fetched += len(out)
        self._thread.read = getattr(self._thread, "read", 0) + len(out)
        return bytes(out)

    def _read_so_far(self) -> int:
        return getattr(self._thread, "read", 0)

    def gguf_shape(self, repo: str, revision: str, model: GgufModel) -> tuple[ModelShape, int]:
        """The model's shape from the headers of all its shards, and the bytes read for it. Each
        shard is read from its start in 1 MiB range requests until its header ends, never past
        ``header_cap`` bytes."""
        limits = Limits(max_header_bytes=self.header_cap)
        before = self._read_so_far()

        def reader(f: HubFile):
            pos = 0

            def read(n: int) -> bytes:
                nonlocal pos
                n = min(n, f.size - pos, self.header_cap - pos)
                data = self.read_range(repo, revision, f.path, pos, n) if n > 0 else b""
                pos += len(data)
                return data
            return read

        try:
            headers = [parse_header(reader(f), f.size, limits) for f in model.files]
            shape = shape_from_headers(headers, name=model.key, file_bytes=model.size)
            return shape, self._read_so_far() - before
        except GGUFError as exc:
            raise HubError(f"{model.key}: {exc}") from None

    def small_json(self, repo: str, revision: str, f: HubFile) -> dict:
        if f.size > JSON_CAP_BYTES:
            raise HubError(f"{f.path} is larger than {JSON_CAP_BYTES >> 20} MiB.")
        try:
            data = json.loads(self.read_range(repo, revision, f.path, 0, f.size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HubError(f"{f.path} in {repo} is not valid JSON.") from None
        if not isinstance(data, dict):
            raise HubError(f"{f.path} in {repo} is not a JSON object.")
        return data

    def _safetensors_header(self, repo: str, revision: str, f: HubFile) -> bytes:
        """The 8-byte length and the JSON header of a safetensors file (not its tensors)."""
        head = self.read_range(repo, revision, f.path, 0, min(f.size, FIRST_READ_BYTES))
        if len(head) < 8:
            raise HubError(f"{f.path} is not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n > min(f.size, self.header_cap):
            raise HubError(f"{f.path}: its header ({n} bytes) is larger than the file or the "
                           f"{self.header_cap >> 20} MiB cap.")
        if len(head) < 8 + n:
            head += self.read_range(repo, revision, f.path, len(head), 8 + n - len(head))
        return head[: 8 + n]

    def transformers_repo(self, listing: RepoListing) -> tuple[HfRepo, TransformersFiles, int]:
        """Check a transformers repo and read its shape without its weights.

        The config, tokenizer config, index and every shard's header are written to a scratch
        folder (shards as sparse files of their real size), so ``services.hf_repo.inspect_repo``
        applies exactly the checks it applies to a local folder (remote code, corrupt headers...).
        Also returns the bytes it read.
        """
        before = self._read_so_far()
        by_name = {f.path: f for f in listing.files}
        repo, rev = listing.repo, listing.revision
        index_shards = None
        index = by_name.get(INDEX_FILE)
        index_data = self.small_json(repo, rev, index) if index else None
        if index_data is not None:
            weight_map = index_data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise HubError(f"{INDEX_FILE} of {repo} has no weight_map.")
            index_shards = {str(v) for v in weight_map.values()}
        selection = transformers_files(listing.files, index_shards, repo)
        if selection.refusal:
            raise HubError(selection.refusal)
        with tempfile.TemporaryDirectory(prefix="fitchat-hub-") as tmp:
            root = Path(tmp) / repo.split("/")[1]
            root.mkdir()
            for name in ("config.json", "tokenizer_config.json"):
                if name in by_name:
                    (root / name).write_text(json.dumps(self.small_json(repo, rev, by_name[name])))
            if index_data is not None:
                (root / INDEX_FILE).write_text(json.dumps(index_data))
            for f in selection.weights:
                with (root / f.path).open("wb") as fh:
                    fh.write(self._safetensors_header(repo, rev, f))
                    fh.truncate(f.size)
            try:
                return inspect_repo(root), selection, self._read_so_far() - before
            except RepoError as exc:
                raise HubError(f"{repo}: {exc}") from None
