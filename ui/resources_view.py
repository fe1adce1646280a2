"""What the Resources tab shows, as pure functions of samples: the gauges (HTML bars), the plot
tables and the status line. No Gradio here; handlers hand these to the components."""
from __future__ import annotations

import html
import time
from typing import Optional, Sequence

from core.resources import GenerationSample, GpuSample, ResourceSample, SystemSample, format_bytes, plot_points

GAUGE_CSS = """
.rs-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; }
.rs-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
           background: var(--block-background-fill); font-size: 0.85em; }
.rs-title { font-weight: 600; margin-bottom: 4px; }
.rs-row { display: flex; justify-content: space-between; gap: 8px; margin-top: 3px; }
.rs-row span:last-child { font-variant-numeric: tabular-nums; text-align: right; }
.rs-bar { height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden; margin: 2px 0 4px; }
.rs-bar div { height: 100%; background: #3b82f6; }
.rs-bar div.rs-warn { background: #f59e0b; } .rs-bar div.rs-full { background: #ef4444; }
.rs-cores { display: grid; grid-template-columns: repeat(auto-fill, minmax(44px, 1fr)); gap: 4px; }
.rs-note { color: var(--body-text-color-subdued); }
.rs-procs { margin: 2px 0 0 0; padding-left: 16px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Optional[float], pattern: str = "{:.0f}", unit: str = "") -> str:
    return "n/a" if value is None else pattern.format(value) + unit


def _row(label: str, value: str) -> str:
    return f'<div class="rs-row"><span>{_e(label)}</span><span>{_e(value)}</span></div>'


def _bar(fraction: Optional[float]) -> str:
    if fraction is None:
        return ""
    pct = max(0.0, min(1.0, fraction)) * 100
    cls = ' class="rs-full"' if pct >= 90 else (' class="rs-warn"' if pct >= 75 else "")
    return f'<div class="rs-bar"><div{cls} style="width:{pct:.1f}%"></div></div>'


def _ratio(part: Optional[float], whole: Optional[float]) -> Optional[float]:
    return part / whole if part is not None and whole else None


def _card(title: str, body: str, elem_id: str = "") -> str:
    ident = f' id="{_e(elem_id)}"' if elem_id else ""
    return f'<div class="rs-card"{ident}><div class="rs-title">{_e(title)}</div>{body}</div>'


def gpu_card(g: GpuSample) -> str:
    used, total = g.memory_used_bytes, g.memory_total_bytes
    body = _row("VRAM", f"{format_bytes(used)} / {format_bytes(total)}") + _bar(_ratio(used, total))
    body += _row("GPU utilisation", _fmt(g.util_percent, unit=" %")) + _bar(_ratio(g.util_percent, 100))
    body += _row("memory controller", _fmt(g.memory_util_percent, unit=" %"))
    body += _row("temperature", _fmt(g.temperature_c, unit=" °C"))
    body += _row("power", f"{_fmt(g.power_w)} / {_fmt(g.power_limit_w, unit=' W')}")
    body += _bar(_ratio(g.power_w, g.power_limit_w))
    body += _row("clocks SM / memory", f"{_fmt(g.sm_clock_mhz)} / {_fmt(g.memory_clock_mhz, unit=' MHz')}")
    tx = _fmt(None if g.pcie_tx_bytes_s is None else g.pcie_tx_bytes_s / 2**20, "{:.1f}")
    rx = _fmt(None if g.pcie_rx_bytes_s is None else g.pcie_rx_bytes_s / 2**20, "{:.1f}", " MiB/s")
    body += _row("PCIe TX / RX", f"{tx} / {rx}")
    if g.processes is None:
        body += '<div class="rs-note">The driver does not list the processes on this GPU.</div>'
    elif not g.processes:
        body += '<div class="rs-note">No process holds memory on this GPU.</div>'
    else:
        items = []
        for p in sorted(g.processes, key=lambda p: -(p.used_bytes or 0)):
            who = {"worker": " — FitChat's model worker", "app": " — FitChat"}.get(p.role, "")
            size = format_bytes(p.used_bytes) if p.used_bytes is not None else "size not reported"
            items.append(f"<li>{_e(p.name or 'unknown')} (pid {p.pid}){_e(who)}: {_e(size)}</li>")
        body += f'<div>Processes holding VRAM:</div><ul class="rs-procs">{"".join(items)}</ul>'
    return _card(f"GPU{g.index} · {g.name}", body, f"resources-gpu{g.index}")


def system_cards(s: SystemSample) -> str:
    ram = _row("RAM used", f"{format_bytes(s.ram_used_bytes)} / {format_bytes(s.ram_total_bytes)}")
    ram += _bar(_ratio(s.ram_used_bytes, s.ram_total_bytes))
    ram += _row("available", format_bytes(s.ram_available_bytes))
    ram += _row("swap used", f"{format_bytes(s.swap_used_bytes)} / {format_bytes(s.swap_total_bytes)}")
    ram += _bar(_ratio(s.swap_used_bytes, s.swap_total_bytes))
    ram += _row("FitChat app RSS", format_bytes(s.app_rss_bytes))
    ram += _row("model worker RSS", format_bytes(s.worker_rss_bytes) if s.worker_rss_bytes is not None else "no worker")
    cores = "".join(f'<div title="core {i}"><div class="rs-note">{i}: {p:.0f}%</div>{_bar(p / 100)}</div>'
                    for i, p in enumerate(s.cpu_percent))
    cpu = _row("all cores", _fmt(s.cpu_mean_percent, unit=" %")) + _bar(_ratio(s.cpu_mean_percent, 100))
    cpu += f'<div class="rs-cores">{cores}</div>'
    return _card("Memory", ram, "resources-ram") + _card(f"CPU · {len(s.cpu_percent)} cores", cpu, "resources-cpu")


def generation_card(g: GenerationSample) -> str:
    if not g.active and g.context_used is None:  # the empty sample: no reply since the model loaded
        return _card("Generation", '<div class="rs-note">No reply yet.</div>', "resources-generation")
    body = _row("now" if g.active else "last reply", "generating" if g.active else "finished")
    pending = "measuring…" if g.active else "n/a"
    speed = pending if g.tokens_per_s is None else _fmt(g.tokens_per_s, "{:.1f}", " tokens/s")
    ttft = pending if g.ttft_s is None else _fmt(1000 * g.ttft_s, unit=" ms")
    body += _row("decode speed", speed) + _row("time to first token", ttft)
    if g.context_used is not None:
        body += _row("context used", f"{g.context_used:,} / {g.n_ctx:,}" if g.n_ctx else f"{g.context_used:,}")
        body += _bar(_ratio(g.context_used, g.n_ctx))
    return _card("Generation", body, "resources-generation")


def gauges_html(sample: Optional[ResourceSample]) -> str:
    if sample is None:
        return '<div class="rs-note">Waiting for the first sample…</div>'
    cards = [gpu_card(g) for g in sample.gpus]
    if sample.gpu_note:
        cards.append(_card("GPU", f'<div class="rs-note">{_e(sample.gpu_note)}</div>', "resources-gpu-none"))
    if sample.system is not None:
        cards.append(system_cards(sample.system))
    cards.append(generation_card(sample.generation))
    return f'<div class="rs-grid">{"".join(cards)}</div>'


def status_line(sample: Optional[ResourceSample], status: dict, refresh_s: float = 1.0,
                plot_every_s: float = 5.0) -> str:
    if sample is None:
        return "Starting the sampler…"
    clock = time.strftime("%H:%M:%S", time.localtime(sample.time))
    cost = status.get("cpu_ms_per_tick")
    text = f"Sample {sample.seq} at {clock} · sampled every {status.get('interval_s', 1):g} s while this tab is open"
    if refresh_s > status.get("interval_s", 1):
        text += (f" · shown every {refresh_s:g} s while the model generates on the CPU, plots every"
                 f" {plot_every_s:g} s, to leave it the cores")
    if cost is not None:
        text += f" · sampler cost {cost:.2f} ms CPU per sample"
    if sample.gpu_note:
        text += f" · {sample.gpu_note}"
    if sample.errors:
        text += " · ⚠️ " + "; ".join(sample.errors[:4]) + (" …" if len(sample.errors) > 4 else "")
    return text


def plot_data(samples: Sequence[ResourceSample], metric: str) -> dict:
    """One LinePlot's value, x in seconds before the newest sample (so the axis limits never change
    and the browser only swaps the data: a change of limits makes it rebuild the whole chart), already
    in the shape ``gr.LinePlot.postprocess`` makes from a DataFrame, which Gradio passes through as is.
    Built directly because the DataFrame round trip cost ~2 ms of CPU per plot per tick;
    tests/test_resources_ui.py checks the two stay identical. Values keep 4 decimals."""
    now = samples[-1].time if samples else 0.0
    return {"columns": ["seconds", "series", "value"],
            "data": [[round(t - now, 1), name, round(value, 4)] for t, name, value in plot_points(samples, metric)],
            "datatypes": {"seconds": "quantitative", "series": "nominal", "value": "quantitative"},
            "mark": "line"}


def has_gpus(samples: Sequence[ResourceSample]) -> bool:
    return any(s.gpus for s in samples)

