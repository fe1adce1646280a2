"""Live resource samples as plain data: one ``ResourceSample`` a second (GPUs, RAM, CPU, the reply
in progress), a bounded history of them, its CSV and the series the Resources tab plots.

Pure: the samplers in ``services/`` fill these dataclasses; nothing here reads the machine.
"""
from __future__ import annotations

import csv
import io
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Iterable, Optional, Sequence

from core.generation import GenerationProgress, GenerationStats

GIB = 1 << 30
MIB = 1 << 20
HISTORY_SECONDS = 300.0  # the plots and the CSV cover the last five minutes


@dataclass(frozen=True)
class VramProcess:
    """A process holding memory on a GPU (from the driver's process list)."""
    pid: int
    name: str
    used_bytes: Optional[int]  # None: the driver does not report it (e.g. WDDM, other containers)
    role: str = ""             # "worker" (FitChat's model worker), "app" (FitChat's UI) or ""


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment. Every figure is None when the driver does not support it."""
    index: int
    name: str
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    util_percent: Optional[float] = None
    memory_util_percent: Optional[float] = None  # memory-controller busy time
    temperature_c: Optional[float] = None
    power_w: Optional[float] = None
    power_limit_w: Optional[float] = None
    sm_clock_mhz: Optional[int] = None
    memory_clock_mhz: Optional[int] = None
    pcie_tx_bytes_s: Optional[float] = None
    pcie_rx_bytes_s: Optional[float] = None
    processes: Optional[tuple[VramProcess, ...]] = None  # None: the list is not available

    def process_bytes(self, role: str) -> Optional[int]:
        """VRAM held by FitChat's ``worker`` (or ``app``); None when it holds none or it is not known."""
        held = [p.used_bytes for p in self.processes or () if p.role == role and p.used_bytes is not None]
        return sum(held) if held else None

    def others(self) -> tuple[VramProcess, ...]:
        """The processes that are not FitChat's."""
        return tuple(p for p in self.processes or () if p.role == "")


# The GpuSample fields that are plain numbers: they become CSV columns in this order.
GPU_FIGURES = tuple(f.name for f in fields(GpuSample) if f.name not in ("index", "name", "processes"))


@dataclass(frozen=True)
class SystemSample:
    ram_total_bytes: int
    ram_used_bytes: int
    ram_available_bytes: int
    swap_total_bytes: int = 0
    swap_used_bytes: int = 0
    cpu_percent: tuple[float, ...] = ()  # per logical core
    app_rss_bytes: Optional[int] = None
    worker_rss_bytes: Optional[int] = None

    @property
    def cpu_mean_percent(self) -> Optional[float]:
        return sum(self.cpu_percent) / len(self.cpu_percent) if self.cpu_percent else None

    @property
    def cpu_max_percent(self) -> Optional[float]:
        return max(self.cpu_percent) if self.cpu_percent else None


@dataclass(frozen=True)
class GenerationSample:
    """The reply in progress (``active``), else the last finished one; all None before any reply."""
    active: bool = False
    tokens_per_s: Optional[float] = None
    ttft_s: Optional[float] = None
    context_used: Optional[int] = None
    n_ctx: Optional[int] = None

    @property
    def live_tokens_per_s(self) -> float:
        """Tokens/s now: 0 while no reply is being generated."""
        return (self.tokens_per_s or 0.0) if self.active else 0.0


def generation_sample(live: Optional[GenerationProgress], last: Optional[GenerationStats]) -> GenerationSample:
    if live is not None:
        ttft = live.first_token_at - live.started if live.first_token_at is not None else None
        return GenerationSample(True, live.tokens_per_s(), ttft, live.context_used, live.n_ctx or None)
    if last is not None:
        return GenerationSample(False, last.measured_tokens_per_s, last.ttft_s, last.context_used, last.n_ctx or None)
    return GenerationSample()


@dataclass(frozen=True)
class ResourceSample:
    seq: int                      # 1, 2, 3... per sampler
    time: float                   # Unix seconds
    system: Optional[SystemSample]
    gpus: tuple[GpuSample, ...] = ()
    gpu_note: str = ""            # why there are no GPU figures ("" when the driver answers)
    generation: GenerationSample = field(default_factory=GenerationSample)
    worker_pid: Optional[int] = None
    errors: tuple[str, ...] = ()  # what failed during this sample (the rest is still valid)
    cost_ms: Optional[float] = None  # CPU time the sampler spent on this sample


class SampleHistory:
    """The last ``seconds`` of samples at one per ``interval_s``: a bounded ring."""

    def __init__(self, seconds: float = HISTORY_SECONDS, interval_s: float = 1.0) -> None:
        if seconds <= 0 or interval_s <= 0:
            raise ValueError("history length and interval must be positive")
        self.seconds = seconds
        self._ring: deque[ResourceSample] = deque(maxlen=int(seconds / interval_s) + 1)

    def append(self, sample: ResourceSample) -> None:
        self._ring.append(sample)

    def __len__(self) -> int:
        return len(self._ring)

    def recent(self, now: Optional[float] = None) -> tuple[ResourceSample, ...]:
        """Samples of the last ``seconds`` before ``now`` (default: before the newest sample)."""
        items = tuple(self._ring)
        if not items:
            return ()
        cutoff = (items[-1].time if now is None else now) - self.seconds
        return tuple(s for s in items if s.time >= cutoff)


# -- CSV ----------------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def history_csv(samples: Sequence[ResourceSample]) -> str:
    """One row per sample; one column group per GPU and per core seen in the history."""
    if not samples:
        raise ValueError("no samples yet")
    gpu_ids = sorted({g.index for s in samples for g in s.gpus})
    n_cores = max((len(s.system.cpu_percent) for s in samples if s.system), default=0)
    header = ["time_utc", "seq", "ram_used_bytes", "ram_available_bytes", "ram_total_bytes", "swap_used_bytes",
              "swap_total_bytes", "cpu_mean_percent", *[f"cpu{i}_percent" for i in range(n_cores)],
              "app_rss_bytes", "worker_rss_bytes", "worker_pid", "generating", "tokens_per_s", "ttft_s",
              "context_used", "n_ctx"]
    for i in gpu_ids:
        header += [f"gpu{i}_{name}" for name in GPU_FIGURES]
        header += [f"gpu{i}_worker_vram_bytes", f"gpu{i}_other_vram_bytes"]
    header += ["gpu_note", "errors", "sampler_cpu_ms"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for s in samples:
        sysm, gen = s.system, s.generation
        cores = list(sysm.cpu_percent) if sysm else []
        row = [datetime.fromtimestamp(s.time, timezone.utc).isoformat(timespec="milliseconds"), s.seq]
        row += ([sysm.ram_used_bytes, sysm.ram_available_bytes, sysm.ram_total_bytes, sysm.swap_used_bytes,
                 sysm.swap_total_bytes, sysm.cpu_mean_percent] if sysm else [None] * 6)
        row += cores + [None] * (n_cores - len(cores))
        row += [sysm.app_rss_bytes if sysm else None, sysm.worker_rss_bytes if sysm else None, s.worker_pid,
                gen.active, gen.tokens_per_s, gen.ttft_s, gen.context_used, gen.n_ctx]
        by_id = {g.index: g for g in s.gpus}
        for i in gpu_ids:
            g = by_id.get(i)
            row += [getattr(g, name) if g else None for name in GPU_FIGURES]
            others = g.others() if g and g.processes is not None else None
            row += [g.process_bytes("worker") if g else None,
                    sum(p.used_bytes or 0 for p in others) if others is not None else None]
        row += [s.gpu_note, "; ".join(s.errors), s.cost_ms]
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


# -- plot series --------------------------------------------------------------------------------

Point = tuple[float, str, float]  # (Unix seconds, series name, value)


def _gpu_points(s: ResourceSample, metric: str) -> Iterable[tuple[str, Optional[float]]]:
    for g in s.gpus:
        if metric == "vram":
            worker = g.process_bytes("worker")
            yield f"GPU{g.index} used", None if g.memory_used_bytes is None else g.memory_used_bytes / GIB
            yield f"GPU{g.index} FitChat worker", None if worker is None else worker / GIB
        else:
            yield f"GPU{g.index}", g.util_percent
            yield f"GPU{g.index} memory controller", g.memory_util_percent


def _system_points(s: ResourceSample, metric: str) -> Iterable[tuple[str, Optional[float]]]:
    m = s.system
    if m is None:
        return
    if metric == "ram":
        yield "RAM used", m.ram_used_bytes / GIB
        yield "swap used", m.swap_used_bytes / GIB
        yield "FitChat app", None if m.app_rss_bytes is None else m.app_rss_bytes / GIB
        yield "FitChat worker", None if m.worker_rss_bytes is None else m.worker_rss_bytes / GIB
    else:
        yield "all cores", m.cpu_mean_percent
        yield "busiest core", m.cpu_max_percent


def plot_points(samples: Sequence[ResourceSample], metric: str) -> list[Point]:
    """Series for one plot: ``vram`` and ``ram`` in GiB, ``gpu_util`` and ``cpu`` in %, ``tokens`` in tokens/s.
    Figures a sample lacks are left out (a gap), never plotted as zero."""
    if metric in ("vram", "gpu_util"):
        source = _gpu_points
    elif metric in ("ram", "cpu"):
        source = _system_points
    elif metric == "tokens":
        return [(s.time, "tokens/s", s.generation.live_tokens_per_s) for s in samples]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return [(s.time, name, float(value)) for s in samples for name, value in source(s, metric) if value is not None]


PLOT_METRICS = ("vram", "gpu_util", "ram", "cpu", "tokens")


def format_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.0f} MiB"
