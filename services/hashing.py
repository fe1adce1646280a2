"""Digests as the Hub states them: the sha256 of an LFS file, the git blob id of a small file; of a
file on disk, or fed piece by piece in a thread while a download writes (hashlib releases the GIL,
so the check overlaps the transfer instead of re-reading the file after it)."""
from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from typing import Callable, Optional

from core.hub_files import HubFile

HASH_CHUNK = 8 << 20
_RESET = object()


def new_digest(f: HubFile, size: int):
    if f.sha256:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % size)
    return h


def file_digest(path: Path, f: HubFile, on_bytes: Callable[[int], None] = lambda n: None,
                cancel: Optional[threading.Event] = None) -> str:
    """The digest of ``path`` of the kind the Hub gives for ``f``; ``cancel`` stops it (InterruptedError)."""
    h = new_digest(f, path.stat().st_size)
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            on_bytes(done)
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled while hashing")
    return h.hexdigest()


class StreamHasher:
    """Hashes the pieces given to ``feed`` in its own thread; at most 64 batches wait (back-pressure)."""

    def __init__(self, f: HubFile, batch_bytes: int = 1 << 20) -> None:
        self._file = f
        self._h = new_digest(f, f.size)
        self._batch: list[bytes] = []       # pieces go to the thread in batches: fewer queue round trips
        self._batched = 0
        self._batch_bytes = batch_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if item is _RESET:
                self._h = new_digest(self._file, self._file.size)
            else:
                self._h.update(item)

    def feed(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= self._batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._queue.put(b"".join(self._batch))
            self._batch, self._batched = [], 0

    def feed_file(self, path: Path, on_bytes: Callable[[int], None] = lambda n: None,
                  cancel: Optional[threading.Event] = None) -> bool:
        """What an earlier attempt left on disk comes first; False when cancelled on the way."""
        done = 0
        with path.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                self._flush()
                self._queue.put(chunk)
                done += len(chunk)
                on_bytes(done)
                if cancel is not None and cancel.is_set():
                    return False
        return True

    def reset(self) -> None:
        self._batch, self._batched = [], 0
        self._queue.put(_RESET)

    def close(self) -> None:
        if self._thread.is_alive():
            self._flush()
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._h.hexdigest()
