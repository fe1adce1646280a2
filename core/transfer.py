"""Download progress as plain data: bytes, a smoothed speed, the ETA, and how to show them."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from core.hub_files import format_bytes

Phase = Literal["checking", "downloading", "verifying", "installing", "done", "cancelled", "failed"]
SPEED_TIME_CONSTANT_S = 3.0


@dataclass(frozen=True)
class TransferProgress:
    total: int                 # bytes of every file of the download
    done: int = 0              # bytes on disk now (including what an earlier attempt left)
    resumed: int = 0           # bytes that were already on disk when this attempt started
    phase: Phase = "checking"
    file: str = ""             # the file being fetched or verified
    file_index: int = 0        # 1-based
    n_files: int = 0
    verified: int = 0          # bytes hashed so far in the verifying phase
    speed: float = 0.0         # bytes/s, smoothed
    started_s: float = 0.0     # monotonic time this attempt started
    updated_s: float = 0.0     # monotonic time of the last update

    @property
    def fetched(self) -> int:
        """Bytes transferred by this attempt."""
        return max(0, self.done - self.resumed)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0

    @property
    def eta_s(self) -> float:
        """Seconds left at the current speed (inf while the speed is unknown)."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        return left / self.speed if self.speed > 0 else math.inf


def start(total: int, resumed: int, n_files: int, now: float) -> TransferProgress:
    return TransferProgress(total=total, done=resumed, resumed=resumed, n_files=n_files, started_s=now,
                            updated_s=now)


def advance(p: TransferProgress, done: int, now: float) -> TransferProgress:
    """``p`` with ``done`` bytes on disk at time ``now``. The speed is the average of this attempt for
    its first 3 s (the first pieces arrive in a burst from buffers), then an exponential moving
    average (time constant 3 s): it follows a change of link speed without jumping on every chunk."""
    dt = now - p.updated_s
    if dt <= 0:
        return replace(p, done=done)
    instant = max(0, done - p.done) / dt
    elapsed = now - p.started_s
    if elapsed < SPEED_TIME_CONSTANT_S or p.speed <= 0:
        speed = max(0, done - p.resumed) / elapsed if elapsed > 0 else instant
    else:
        alpha = 1 - math.exp(-dt / SPEED_TIME_CONSTANT_S)
        speed = p.speed + alpha * (instant - p.speed)
    return replace(p, done=done, speed=speed, updated_s=now)


def format_eta(seconds: float) -> str:
    if math.isinf(seconds) or seconds != seconds:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def describe(p: TransferProgress) -> str:
    """One line: what is happening, bytes, speed and ETA."""
    files = f" (file {p.file_index} of {p.n_files})" if p.n_files > 1 and p.file_index else ""
    if p.phase == "verifying":
        return f"Verifying sha256 of {p.file}{files}: {format_bytes(p.verified)}"
    if p.phase in ("checking", "installing", "done", "cancelled", "failed"):
        words = {"checking": "Checking", "installing": "Installing", "done": "Done", "cancelled": "Cancelled",
                 "failed": "Failed"}[p.phase]
        return f"{words}: {format_bytes(p.done)} of {format_bytes(p.total)}"
    resumed = f", resumed at {format_bytes(p.resumed)}" if p.resumed else ""
    return (f"{p.fraction:.0%} · {format_bytes(p.done)} of {format_bytes(p.total)} · "
            f"{format_bytes(p.speed)}/s · ETA {format_eta(p.eta_s)}{resumed}{files}")


def text_bar(p: TransferProgress, width: int = 30) -> str:
    """A terminal progress bar: ``[#########.........] 45% ...``."""
    filled = int(round(p.fraction * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {describe(p)}"
