"""Download a repo's files into the models folder through huggingface_hub: free space checked first,
progress reported, cancellable, resumed where an earlier attempt stopped, every file verified
(sha256 of LFS files, git blob id of small ones; hashed as it is written, the resumed part re-read)
before the model is installed.

Layout: ``models/<owner>--<name>/<file>`` (what presets and the library expect). Files arrive in
``models/.partial/<owner>--<name>/<file>.<digest>.part`` and move into place only when all of the
download is verified, the file that makes the model visible to the library (the first shard of a
GGUF, ``config.json`` of a transformers folder) last. A partial or unverified file is never listed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

import httpx2
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from core.hub_files import HubFile, HubNameError, check_repo_id, disk_space_problem, local_name, target_folder
from core.model_shape import split_info
from core.transfer import TransferProgress, advance, start
from services.hashing import StreamHasher, file_digest
from services.hub import HubClient, HubError, hub_errors

PARTIAL_DIR = ".partial"
MANIFEST = ".fitchat-download.json"
DEFAULT_MARGIN_BYTES = 512 << 20


class DownloadError(Exception):
    """The download stopped; the message says why and what was kept."""


class DownloadCancelled(DownloadError):
    pass


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class DownloadRequest:
    repo: str
    revision: str
    files: tuple[HubFile, ...]
    kind: str = "gguf"            # "gguf" | "transformers"


@dataclass(frozen=True)
class Installed:
    repo: str
    path: Path                    # what the library lists: the first GGUF shard, or the folder
    fetched: int                  # bytes transferred by this attempt
    resumed: int                  # bytes an earlier attempt had left
    seconds: float


@dataclass(frozen=True)
class _Target:
    file: HubFile
    final: Path
    part: Path


def inside(root: Path, path: Path) -> bool:
    """``path`` resolves to somewhere strictly inside ``root`` (symlinks followed)."""
    root, resolved = root.resolve(), path.resolve()
    return resolved != root and resolved.is_relative_to(root)


def _install_order(targets: list[_Target], kind: str) -> list[_Target]:
    """The file that makes the model visible goes last."""
    def key(t: _Target) -> tuple:
        name = t.final.name
        if kind == "transformers":
            return (name == "config.json", not name.endswith(".safetensors"), name)
        info = split_info(name)
        return (info is None or info[1] == 1, name)
    return sorted(targets, key=key)


class Downloader:
    def __init__(self, models_dir: Path, hub: HubClient, free_space: Callable[[Path], int] = disk_free_bytes,
                 margin_bytes: int = DEFAULT_MARGIN_BYTES, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 30.0) -> None:
        self.models_dir = Path(models_dir)
        self.timeout = timeout
        self.hub = hub
        self.free_space = free_space
        self.margin_bytes = margin_bytes
        self.clock = clock

    # -- where files go ---------------------------------------------------------------------------
    def folder(self, repo: str) -> Path:
        return self.models_dir / target_folder(repo)

    def staging(self, repo: str) -> Path:
        return self.models_dir / PARTIAL_DIR / target_folder(repo)

    def targets(self, request: DownloadRequest) -> list[_Target]:
        """Every file's final and partial path, each checked to stay inside the models folder."""
        check_repo_id(request.repo)
        folder, staging = self.folder(request.repo), self.staging(request.repo)
        out, names = [], set()
        for f in request.files:
            name = local_name(f.path)
            if name in names:
                raise HubNameError(f"two files would both be saved as {name!r}")
            names.add(name)
            digest = f.sha256 or f.git_oid
            final, part = folder / name, staging / f"{name}.{digest[:16]}.part"
            for path in (final, part):
                if not inside(self.models_dir, path):
                    raise HubNameError(f"{f.path[:80]!r} would be written outside the models folder")
            out.append(_Target(f, final, part))
        return out

    # -- the download -----------------------------------------------------------------------------
    def run(self, request: DownloadRequest, on_progress: Callable[[TransferProgress], None] = lambda p: None,
            cancel: Optional[threading.Event] = None) -> Installed:
        cancel = cancel or threading.Event()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        try:
            targets = self.targets(request)
        except HubNameError as exc:
            raise DownloadError(f"Refused: {exc}. Nothing was downloaded.") from None
        staging = self.staging(request.repo)
        staging.mkdir(parents=True, exist_ok=True)
        with self._lock(request.repo):
            todo = [t for t in targets if not self._installed(request.repo, t)]
            have = [min(t.part.stat().st_size, t.file.size) if t.part.is_file() else 0 for t in todo]
            resumed, total = sum(have), sum(t.file.size for t in todo)
            problem = disk_space_problem(total - resumed, self.free_space(self.models_dir), self.margin_bytes,
                                         str(self.models_dir))
            if problem:
                raise DownloadError(problem)
            state = {"p": start(total, resumed, len(todo), self.clock())}
            report = self._reporter(state, on_progress)
            for i, t in enumerate(todo):
                # bytes on disk outside this file: the files before it, and what later files already have
                base = sum(x.file.size for x in todo[:i]) + sum(have[i + 1:])
                report(file=t.file.name, file_index=i + 1, offset=base, now=have[i])
                digest = self._fetch(request, t, lambda n, base=base: report(phase="downloading", offset=base, now=n),
                                     cancel, lambda n: report(phase="verifying", verified=n))
                report(phase="verifying", verified=t.file.size)
                self._verify(t, digest)
            report(phase="installing", offset=total, now=0)
            self._install(request, targets, todo)
            p = state["p"]
            on_progress(replace(p, phase="done"))
        with contextlib.suppress(OSError):
            staging.rmdir()
        entry = _install_order(targets, request.kind)[-1].final
        path = entry.parent if request.kind == "transformers" else entry
        return Installed(request.repo, path, p.fetched, resumed, self.clock() - p.started_s)

    def _reporter(self, state: dict, on_progress: Callable[[TransferProgress], None]):
        def report(offset: int = 0, now: int = 0, **changes) -> None:
            p = state["p"]
            if changes:
                p = replace(p, **changes)
            if "verified" not in changes:
                p = advance(p, offset + now, self.clock())
            state["p"] = p
            on_progress(p)
        return report

    @contextlib.contextmanager
    def _lock(self, repo: str) -> Iterator[None]:
        path = self.models_dir / PARTIAL_DIR / f"{target_folder(repo)}.lock"
        with path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DownloadError(f"{repo} is already being downloaded (in another tab or process).") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _installed(self, repo: str, t: _Target) -> bool:
        """The file is already in place with the expected digest (per the manifest, else hashed)."""
        if not t.final.is_file() or t.final.is_symlink():
            return False
        recorded = read_manifest(self.folder(repo)).get("files", {}).get(t.final.name, {})
        digest = t.file.sha256 or t.file.git_oid
        if recorded.get("digest") == digest and t.final.stat().st_size == t.file.size:
            return True
        if t.final.stat().st_size == t.file.size and file_digest(t.final, t.file) == digest:
            return True
        raise DownloadError(f"{t.final.name} is already in the models folder but differs from the Hub's file: "
                            "delete it from the library first. Nothing was downloaded.")

    def _fetch(self, request: DownloadRequest, t: _Target, on_bytes: Callable[[int], None],
               cancel: threading.Event, on_rehash: Callable[[int], None]) -> str:
        """Fetch (or finish) one file into its part; return its digest, computed as it was written
        (the part an earlier attempt left is read again first: ``on_rehash`` follows that)."""
        f = t.file
        url = hf_hub_url(request.repo, f.path, revision=request.revision, endpoint=self.hub.endpoint)
        try:
            with hub_errors(request.repo, self.hub.endpoint):
                meta = get_hf_file_metadata(url, token=self.hub.token)
        except HubError as exc:
            raise DownloadError(str(exc)) from None
        expected = f.sha256 or f.git_oid
        if (meta.etag and meta.etag != expected) or (meta.size is not None and meta.size != f.size):
            raise DownloadError(f"{f.path} changed on the Hub since the repo was opened: open it again.")
        headers = build_hf_headers(token=self.hub.token)
        headers["Accept-Encoding"] = "identity"
        if urlparse(meta.location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)  # a CDN gets no token
        if t.part.is_file() and t.part.stat().st_size > f.size:
            t.part.unlink()
        hasher = StreamHasher(f)
        try:
            if t.part.is_file() and not hasher.feed_file(t.part, on_rehash, cancel):
                raise DownloadCancelled("cancelled")
            with t.part.open("r+b" if t.part.is_file() else "wb") as fh:
                fh.seek(0, os.SEEK_END)
                on_bytes(fh.tell())
                with hub_errors(request.repo, self.hub.endpoint):
                    stream_to(fh, meta.location, headers, f.size, on_bytes, cancel, self.timeout, hasher)
            return hasher.hexdigest()
        except DownloadCancelled:
            kept = t.part.stat().st_size if t.part.is_file() else 0
            raise DownloadCancelled(f"Cancelled. {f.name}: {kept:,} of {f.size:,} bytes kept; Download again "
                                    "resumes from there.") from None
        except HubError as exc:
            raise DownloadError(f"{exc} The partial file is kept: Download again resumes it.") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(f"The disk filled up while downloading {f.name}. The partial file is kept: "
                                    "free some space and Download again to resume.") from None
            raise DownloadError(f"{f.name}: {exc}. Download again to resume.") from None
        finally:
            hasher.close()

    def _verify(self, t: _Target, got: str) -> None:
        expected = t.file.sha256 or t.file.git_oid
        if got != expected:
            t.part.unlink(missing_ok=True)
            kind = "sha256" if t.file.sha256 else "git blob id"
            raise DownloadError(f"{t.file.name} failed verification: its {kind} is {got[:12]}…, the Hub says "
                                f"{expected[:12]}…. The bad file was deleted and the model was not added to the "
                                "library; download it again.")

    def _install(self, request: DownloadRequest, targets: list[_Target], todo: list[_Target]) -> None:
        folder = self.folder(request.repo)
        folder.mkdir(parents=True, exist_ok=True)
        if not inside(self.models_dir, folder) or folder.is_symlink():
            raise DownloadError(f"{folder} is not a folder inside the models folder; not installing.")
        for t in _install_order(todo, request.kind):
            os.replace(t.part, t.final)
        manifest = read_manifest(folder)
        files = manifest.get("files", {}) if isinstance(manifest.get("files"), dict) else {}
        for t in targets:
            files[t.final.name] = {"hub_path": t.file.path, "size": t.file.size,
                                   "digest": t.file.sha256 or t.file.git_oid}
        write_manifest(folder, {"repo": request.repo, "revision": request.revision, "kind": request.kind,
                                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files})


def stream_to(fh, url: str, headers: dict, size: int, on_bytes: Callable[[int], None], cancel: threading.Event,
              timeout: float = 30.0, hasher: Optional[StreamHasher] = None, retries: int = 5,
              report_every_s: float = 0.1) -> None:
    """Append the rest of ``url`` to ``fh`` (open at its end) with huggingface_hub's HTTP session:
    a Range request from what ``fh`` holds, each piece written as it arrives (a dropped connection
    loses nothing already received) and given to ``hasher``, retried with back-off after network
    errors. Cancel stops it after the current piece; what was written stays for the next attempt."""
    failures, last = 0, 0.0
    pos = fh.tell()
    while pos < size:
        wanted = {**headers, "Range": f"bytes={pos}-"} if pos else headers
        try:
            with get_session().stream("GET", url, headers=wanted, timeout=timeout) as response:
                hf_raise_for_status(response)
                if pos and response.status_code != 206:  # the server ignored Range: start again
                    fh.seek(0)
                    fh.truncate()
                    pos = 0
                    if hasher is not None:
                        hasher.reset()
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    if hasher is not None:
                        hasher.feed(chunk)
                    pos += len(chunk)
                    failures = 0
                    now = time.monotonic()
                    if now - last >= report_every_s:
                        last = now
                        on_bytes(pos)
                    if cancel.is_set():
                        on_bytes(pos)
                        raise DownloadCancelled("cancelled")
                    if pos > size:
                        raise DownloadError(f"the server sent more than the file's {size:,} bytes")
        except httpx2.TransportError as exc:
            failures += 1
            if failures > retries:
                raise DownloadError(f"the connection failed {failures} times in a row ({type(exc).__name__}); "
                                    "the partial file is kept: Download again resumes it.") from None
            time.sleep(min(2.0 ** (failures - 1), 10.0))
        on_bytes(pos)


def read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_manifest(folder: Path, data: dict) -> None:
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
