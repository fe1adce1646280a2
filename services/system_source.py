"""RAM, swap, per-core CPU and the app's and worker's RSS, through psutil."""
from __future__ import annotations

import os
from typing import Optional

from core.resources import SystemSample


class SystemSource:
    """Cheap to call once a second: a handful of /proc reads. Process handles are cached."""

    def __init__(self, app_pid: Optional[int] = None) -> None:
        import psutil

        self._psutil = psutil
        self.app_pid = app_pid or os.getpid()
        self._procs: dict[int, object] = {}
        self._cpu_times = psutil.cpu_times(percpu=True)  # our own baseline: psutil.cpu_percent's is global

    def _rss(self, pid: Optional[int]) -> Optional[int]:
        if pid is None:
            return None
        psutil = self._psutil
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            return proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None

    def sample(self, worker_pid: Optional[int]) -> SystemSample:
        psutil = self._psutil
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        # Forget handles of processes that are neither ours nor the current worker (old workers).
        for pid in [p for p in self._procs if p not in (self.app_pid, worker_pid)]:
            del self._procs[pid]
        return SystemSample(
            ram_total_bytes=vm.total, ram_used_bytes=vm.total - vm.available, ram_available_bytes=vm.available,
            swap_total_bytes=swap.total, swap_used_bytes=swap.used,
            cpu_percent=self._cpu_percent(),
            app_rss_bytes=self._rss(self.app_pid), worker_rss_bytes=self._rss(worker_pid))

    def _cpu_percent(self) -> tuple[float, ...]:
        """Busy % per logical core since the previous sample (iowait counts as idle, as in psutil)."""
        now = self._psutil.cpu_times(percpu=True)
        out = []
        for before, after in zip(self._cpu_times, now):
            idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
            total = _total(after) - _total(before)
            out.append(round(min(100.0, max(0.0, 100 * (1 - idle / total))), 1) if total > 0 else 0.0)
        self._cpu_times = now
        return tuple(out)

    def process_name(self, pid: int) -> str:
        """A short name for a pid; empty when the process is gone or lives in another namespace.
        Not cached: pids get reused, and a warning must not name the wrong program."""
        try:
            return self._psutil.Process(pid).name()
        except (self._psutil.Error, OSError):
            return ""


def _total(times) -> float:
    # Linux counts guest time inside user time too (psutil subtracts it the same way).
    return sum(times) - getattr(times, "guest", 0) - getattr(times, "guest_nice", 0)
