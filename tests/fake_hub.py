"""A small local Hugging Face Hub for tests and benchmarks: it answers the routes huggingface_hub
calls, with the Hub's headers, for repos the tests build.

* ``GET /api/models``: search (``search``, ``filter`` tags, ``pipeline_tag``, ``sort``, ``limit``).
* ``GET /api/models/{repo}[/revision/{rev}]``: repo info; ``blobs=true`` adds sizes, git ids, LFS sha256.
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files directly (ETag = git blob id); large files
  (``.gguf``, ``.safetensors``, ``.bin``) answer 302 to a CDN address on a second port (another
  origin, as the Hub's CDN) with ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``. ``X-Repo-Commit``
  always; ``X-Error-Code`` (RepoNotFound, EntryNotFound, GatedRepo) on errors.
* ``GET /cdn/{sha256}``: the bytes, with ``Range`` (206 + ``Content-Range``).

Knobs for faults: ``cut_once[sha] = n`` drops the connection after byte n (once), ``corrupt[sha] =
offset`` flips a byte, ``down = True`` answers 503 (``down_after_cut``: once cut), ``rate_mib_s`` paces
the bytes like a link of that speed. ``log`` has one ``Request`` per request (port, method, path,
range, authorised, body bytes sent); ``served_bytes`` sums the bytes of a file's requests since the
last ``reset_counters`` (a connection of before that keeps counting on its own entry only).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Union
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
TOKEN = "hf_fake_token_for_tests_0123456789"


@dataclass
class FakeFile:
    path: str
    source: Union[bytes, Path]
    size: int
    sha256: str
    git_oid: str

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    def read(self, start: int, length: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:start + length]
        with self.source.open("rb") as fh:
            fh.seek(start)
            return fh.read(length)


def _digests(source: Union[bytes, Path]) -> tuple[int, str, str]:
    sha, git = hashlib.sha256(), hashlib.sha1()
    if isinstance(source, bytes):
        size = len(source)
        chunks = [source]
    else:
        size = source.stat().st_size
        chunks = _file_chunks(source)
    git.update(b"blob %d\0" % size)
    for chunk in chunks:
        sha.update(chunk)
        git.update(chunk)
    return size, sha.hexdigest(), git.hexdigest()


def _file_chunks(path: Path):
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            yield chunk


class Request(tuple):
    """(port, method, path, range, authorised) as logged, plus ``sent``: body bytes written."""
    sent: int = 0

    @property
    def path(self) -> str:
        return self[2]


@dataclass
class FakeRepo:
    id: str
    files: dict[str, FakeFile]
    sha: str
    tags: tuple[str, ...] = ()
    pipeline_tag: str = "text-generation"
    downloads: int = 0
    likes: int = 0
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    log: list["Request"] = field(default_factory=list)
    cut_once: dict[str, int] = field(default_factory=dict)
    cut_done: set[str] = field(default_factory=set)
    corrupt: dict[str, int] = field(default_factory=dict)
    down: bool = False
    down_after_cut: bool = False  # once a cut happened, the CDN answers 503 (an outage mid-download)
    rate_mib_s: float = 0.0       # a link of this speed: each body is paced to it (0 = as fast as possible)
    url: str = ""
    cdn_url: str = ""

    def add_repo(self, repo_id: str, files: dict[str, Union[bytes, Path]], tags: tuple[str, ...] = (),
                 downloads: int = 0, gated: bool = False, pipeline_tag: str = "text-generation",
                 hash_content: bool = True) -> FakeRepo:
        """``hash_content=False`` (for sparse multi-GB files that are only ever read for their header)
        gives each file a declared digest instead of hashing it: downloading one fails verification."""
        built = {}
        for path, source in files.items():
            if hash_content:
                size, sha, git = _digests(source)
            else:
                size = source.stat().st_size if isinstance(source, Path) else len(source)
                sha = hashlib.sha256(f"declared:{repo_id}/{path}".encode()).hexdigest()
                git = hashlib.sha1(sha.encode()).hexdigest()
            built[path] = FakeFile(path, source, size, sha, git)
        commit = hashlib.sha1(repo_id.encode() + b"".join(f.sha256.encode() for f in built.values())).hexdigest()
        repo = FakeRepo(repo_id, built, commit, tags, pipeline_tag, downloads, 0, gated)
        self.repos[repo_id] = repo
        return repo

    def file(self, repo_id: str, path: str) -> FakeFile:
        return self.repos[repo_id].files[path]

    def served_bytes(self, repo_id: str, path: str) -> int:
        f = self.file(repo_id, path)
        key = f"/cdn/{f.sha256}" if f.lfs else f"/{repo_id}/resolve/"
        return sum(r.sent for r in list(self.log) if r.path == key or (not f.lfs and r.path.startswith(key)
                                                                       and r.path.endswith("/" + path)))

    def reset_counters(self) -> None:
        self.log = []

    # -- server -----------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _authorised(self) -> bool:
        return self.headers.get("authorization") == f"Bearer {TOKEN}"

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str) -> None:
        self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):  # the client went away (a cancel): not an error
            self.close_connection = True

    def _route(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        port = self.server.server_address[1]
        self.request = Request((port, self.command, path, self.headers.get("range"), self._authorised()))
        self.hub.log.append(self.request)
        if path == "/api/models":
            return self._search(parse_qs(url.query))
        if m := _INFO.match(path):
            return self._info(m["repo"], parse_qs(url.query))
        if m := _RESOLVE.match(path):
            return self._resolve(m["repo"], m["rev"], m["path"])
        if path.startswith("/cdn/"):
            return self._cdn(path[len("/cdn/"):])
        self._error(404, "NotFound", f"no route {path}")

    def _search(self, query: dict) -> None:
        words = query.get("search", [""])[0].lower()
        tags = query.get("filter", [])
        pipeline = query.get("pipeline_tag", [None])[0]
        repos = [r for r in self.hub.repos.values() if words in r.id.lower() and all(t in r.tags for t in tags)
                 and (pipeline is None or r.pipeline_tag == pipeline)]
        if query.get("sort", [""])[0] == "downloads":
            repos.sort(key=lambda r: -r.downloads)
        limit = int(query.get("limit", ["1000"])[0])
        self._json([{"_id": r.sha[:24], "id": r.id, "downloads": r.downloads, "likes": r.likes,
                     "gated": "manual" if r.gated else False, "lastModified": "2026-01-02T03:04:05.000Z",
                     "tags": list(r.tags), "pipeline_tag": r.pipeline_tag} for r in repos[:limit]])

    def _info(self, repo_id: str, query: dict) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            entry = {"rfilename": f.path}
            if blobs:
                entry.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(entry)
        self._json({"_id": repo.sha[:24], "id": repo.id, "sha": repo.sha, "gated": "manual" if repo.gated else False,
                    "private": False, "tags": list(repo.tags), "pipeline_tag": repo.pipeline_tag,
                    "downloads": repo.downloads, "lastModified": "2026-01-02T03:04:05.000Z", "siblings": siblings})

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if rev not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", "Revision not found")
        f = repo.files.get(path)
        common = {"X-Repo-Commit": repo.sha}
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        if repo.gated and not self._authorised():
            return self._error(401, "GatedRepo", "Access to this model is restricted")
        if f.lfs:
            return self._send(302, b"", {**common, "Location": f"{self.hub.cdn_url}/cdn/{f.sha256}",
                                         "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": f.size,
                                         "ETag": f'"{f.git_oid}"'})
        self._body(f, f"{repo_id}/{path}", {**common, "ETag": f'"{f.git_oid}"'})

    def _cdn(self, sha: str) -> None:
        if self.hub.down or (self.hub.down_after_cut and sha in self.hub.cut_done):
            return self._error(503, "Unavailable", "down for maintenance")
        f = next((f for r in self.hub.repos.values() for f in r.files.values() if f.sha256 == sha and f.lfs), None)
        if f is None:
            return self._error(404, "NotFound", "no such object")
        self._body(f, sha, {"ETag": f'"{sha}"'})

    def _body(self, f: FakeFile, counter: str, headers: dict) -> None:
        start, end, status = 0, f.size - 1, 200
        wanted = self.headers.get("range")
        if wanted and (m := _RANGE.match(wanted.strip())):
            start = int(m[1])
            end = min(int(m[2]) if m[2] else f.size - 1, f.size - 1)
            if start >= f.size:
                return self._send(416, b"", {"Content-Range": f"bytes */{f.size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{f.size}"}
        length = end - start + 1
        self.send_response(status)
        for key, value in {**headers, "Accept-Ranges": "bytes", "Content-Length": length,
                           "Content-Type": "application/octet-stream"}.items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.hub.cut_once.get(counter)
        stop = end + 1
        if cut is not None and start <= cut < end:
            del self.hub.cut_once[counter]
            self.hub.cut_done.add(counter)
            stop = cut
        bad = self.hub.corrupt.get(counter)
        rate = self.hub.rate_mib_s * (1 << 20)
        if cut is None and bad is None and not rate and isinstance(f.source, Path):
            self.wfile.flush()
            with f.source.open("rb") as fh:
                sent = self.connection.sendfile(fh, start, length)
            self.request.sent += sent
            return
        pos, began = start, time.monotonic()
        while pos < stop:
            chunk = f.read(pos, min(256 << 10 if rate else 1 << 20, stop - pos))
            if bad is not None and pos <= bad < pos + len(chunk):
                chunk = chunk[: bad - pos] + bytes([chunk[bad - pos] ^ 0xFF]) + chunk[bad - pos + 1:]
            self.wfile.write(chunk)
            pos += len(chunk)
            self.request.sent += len(chunk)
            if rate:  # on schedule, as a link of that speed delivers: a fast reader is never held back
                time.sleep(max(0.0, began + (pos - start) / rate - time.monotonic()))
        if stop <= end:
            self.wfile.flush()
            self.close_connection = True


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m tests.fake_hub REPO FILE...``: serve files as one repo until killed (benchmarks);
    prints the Hub's address on the first line."""
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--rate-mib-s", type=float, default=0.0, help="pace each download to this speed (a link)")
    args = ap.parse_args(argv)
    hub = FakeHub(rate_mib_s=args.rate_mib_s)
    hub.add_repo(args.repo, {p.name: p for p in args.files}, ("gguf",))
    hub.start()
    print(hub.url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    hub.stop()


if __name__ == "__main__":
    main()
