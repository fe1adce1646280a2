"""A download running in its own thread, so the UI (and the chat) never waits on it: the latest
progress to poll, a cancel switch, and the result or the error when it ends."""
from __future__ import annotations

import threading
from typing import Optional

from core.transfer import TransferProgress
from services.downloads import DownloadCancelled, DownloadError, Downloader, DownloadRequest, Installed


class DownloadJob:
    def __init__(self, downloader: Downloader, request: DownloadRequest) -> None:
        self.downloader = downloader
        self.request = request
        self.cancel = threading.Event()
        self.progress: Optional[TransferProgress] = None
        self.result: Optional[Installed] = None
        self.error: str = ""
        self.cancelled = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"download {request.repo}", daemon=True)

    def start(self) -> "DownloadJob":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.downloader.run(self.request, self._on_progress, self.cancel)
        except DownloadCancelled as exc:
            self.cancelled, self.error = True, str(exc)
        except DownloadError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug must not leave the UI waiting forever
            self.error = f"The download stopped unexpectedly: {type(exc).__name__}: {exc}"
        finally:
            self._done.set()

    def _on_progress(self, progress: TransferProgress) -> None:
        self.progress = progress

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def stop(self) -> None:
        self.cancel.set()


def stop_job(job: object) -> None:
    """For gr.State's delete_callback: a closed page stops its download (the partial file stays)."""
    if isinstance(job, DownloadJob) and not job.done:
        job.stop()
