"""Where the loaded model really sits, measured (llama.cpp's buffer sizes, the driver's per-process
VRAM) beside the planner's prediction; and when other processes hold enough VRAM to change a plan.

Pure: plain data in, Markdown text out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from core.hardware import markdown_safe_name
from core.plan import MemoryBreakdown, Plan
from core.resources import GIB, MIB, GpuSample, format_bytes

_GPU_DEVICE = re.compile(r"^(CUDA|ROCm|HIP|Vulkan|SYCL|MUSA|CANN|Metal)(\d*)$")
_PURPOSE = {"model": "weights", "KV": "kv_cache", "RS": "kv_cache", "compute": "compute", "output": "compute"}
_LABELS = (("weights", "weights"), ("kv_cache", "KV"), ("compute", "compute"))


@dataclass(frozen=True)
class LoadedModel:
    """What the Resources tab needs from a loaded model (``backends.base.ModelInfo`` has it all)."""
    name: str
    n_layer: int
    n_gpu_layers: int               # as requested: -1 = all
    gpu_offload_supported: bool
    n_ctx: int
    kv_type: str
    flash_attn: bool
    buffers: tuple[tuple[str, str, float], ...] = ()  # (device, kind, MiB) as the backend measured them
    worker_pid: Optional[int] = None
    n_cpu_moe: int = 0              # blocks whose experts llama.cpp put in RAM (its load log)
    n_parallel: int = 1             # replies generated at once, a KV cache of n_ctx each


def device_of(device: str) -> str:
    """``CUDA0`` -> ``GPU0``; host buffers (``CPU``, ``CPU_Mapped``, ``CUDA_Host``...) -> ``CPU``."""
    match = _GPU_DEVICE.match(device)
    return f"GPU{match[2] or 0}" if match else "CPU"


def measured_breakdown(buffers: Sequence[tuple[str, str, float]]) -> dict[str, MemoryBreakdown]:
    """Bytes by purpose per device (``GPU0``, ``GPU1``, ``CPU``) from llama.cpp's buffer lines."""
    sums: dict[str, dict[str, int]] = {}
    for device, kind, mib in buffers:
        purpose = _PURPOSE.get(kind, "overhead")
        slot = sums.setdefault(device_of(device), {})
        slot[purpose] = slot.get(purpose, 0) + int(round(mib * MIB))
    return {dev: MemoryBreakdown(**parts) for dev, parts in sorted(sums.items(), key=lambda kv: kv[0] == "CPU")}


def layers_on_gpu(n_layer: int, n_gpu_layers: int, offload_supported: bool) -> tuple[int, int]:
    """(layers on the GPU, all layers): the blocks plus the output head, as llama.cpp counts them."""
    total = n_layer + 1
    if not offload_supported or n_gpu_layers == 0:
        return 0, total
    return (total if n_gpu_layers < 0 or n_gpu_layers >= total else n_gpu_layers), total


def decode_uses_cpu(model: Optional[LoadedModel]) -> bool:
    """The CPU computes (some of) each token: no GPU offload, a partial one, or no GPU buffers at all."""
    if model is None:
        return False
    on_gpu, total = layers_on_gpu(model.n_layer, model.n_gpu_layers, model.gpu_offload_supported)
    return on_gpu < total or not any(device_of(d) != "CPU" for d, _, _ in model.buffers)


def _parts(b: MemoryBreakdown) -> str:
    text = ", ".join(f"{label} {format_bytes(getattr(b, key))}" for key, label in _LABELS)
    return text + (f", other {format_bytes(b.overhead)}" if b.overhead else "")


def _error(predicted: int | float, measured: int | float) -> str:
    if not predicted:
        return "–"
    error = round(100 * (measured - predicted) / predicted, 1)
    return f"{error + 0.0:+.1f} %"  # + 0.0 turns -0.0 into 0.0


def _sum(parts: Sequence[MemoryBreakdown]) -> MemoryBreakdown:
    return MemoryBreakdown(*(sum(getattr(p, k) for p in parts) for k in ("weights", "kv_cache", "compute", "overhead")))


def slots_text(n_parallel: int, plan: Optional[Plan]) -> str:
    """The load's slots: how many replies run at once, and why that many when the planner chose."""
    text = ("1 slot: one reply at a time" if n_parallel <= 1
            else f"{n_parallel} slots: {n_parallel} replies at once, a KV cache each")
    reason = plan.extra.get("parallel_reason") if plan is not None else None
    return text + (f" ({reason})" if reason and reason != "as asked" else "")


def placement_card(model: Optional[LoadedModel], plan: Optional[Plan], worker_vram: dict[int, Optional[int]],
                   worker_rss: Optional[int] = None, last_tokens_per_s: Optional[float] = None) -> str:
    """Markdown: layers and bytes per device, the prediction beside them and the error.

    ``worker_vram`` maps a GPU index to the VRAM the driver says the worker holds (None: unknown).
    """
    if model is None:
        return "**No model loaded.** Load one in the Chat tab to see where it sits."
    on_gpu, total = layers_on_gpu(model.n_layer, model.n_gpu_layers, model.gpu_offload_supported)
    devices = measured_breakdown(model.buffers)
    gpus = [d for d in devices if d != "CPU"]
    lines = [f"**{model.name}** · context {model.n_ctx:,} tokens · KV {model.kv_type} · "
             f"flash attention {'on' if model.flash_attn else 'off'} · " + slots_text(model.n_parallel, plan)]
    layer_text = {gpus[0]: f"{on_gpu}/{total} layers"} if len(gpus) == 1 else {}
    if len(gpus) > 1:
        lines.append(f"**GPUs**: {on_gpu}/{total} layers split over {', '.join(gpus)}")
    overhead: dict[str, int] = {}
    for dev in gpus:
        b = devices[dev]
        text = f"**{dev}**: " + (f"{layer_text[dev]} — " if dev in layer_text else "") + _parts(b)
        held = worker_vram.get(int(dev[3:]))
        if held is not None:
            overhead[dev] = held - b.total
            text += (f"; the driver says the worker holds {format_bytes(held)} "
                     f"(so CUDA context and runtime ≈ {format_bytes(held - b.total)})")
        lines.append(text)
    cpu = devices.get("CPU", MemoryBreakdown())
    cpu_text = f"**CPU**: {total - on_gpu}/{total} layers — {_parts(cpu)}"
    if any(d.startswith("CPU_Mapped") and k == "model" for d, k, _ in model.buffers):
        cpu_text += " (weights memory-mapped from the file)"
    if worker_rss is not None:
        cpu_text += f"; worker RSS {format_bytes(worker_rss)}"
    lines.append(cpu_text)
    if not model.buffers:
        lines.append("The backend reported no buffer sizes for this load, so the bytes above are unknown, not zero.")
    if not model.gpu_offload_supported:
        lines.append("CPU only: this llama.cpp build has no GPU offload.")
    elif on_gpu and not gpus:
        lines.append(f"⚠️ {on_gpu} layers were asked for on the GPU, but llama.cpp reported no GPU buffers: "
                     "the model runs on the CPU.")
    if plan is not None and plan.warning:
        lines.append(f"⚠️ {plan.warning}")
    lines.append(_prediction(plan, on_gpu, total, gpus, devices, overhead, last_tokens_per_s, model.n_cpu_moe))
    lines += gpu_cards(plan, devices, worker_vram)
    return "\n\n".join(lines)


def gpu_cards(plan: Optional[Plan], devices: dict[str, MemoryBreakdown], worker_vram: dict[int, Optional[int]]) -> list[str]:
    """One card per GPU of a plan over several GPUs: its layers and bytes predicted beside what
    llama.cpp's buffers and the driver measured on that GPU."""
    if plan is None or not plan.devices:
        return []
    cards = []
    for d in plan.devices:
        measured = devices.get(f"GPU{d.index}", MemoryBreakdown())
        held = worker_vram.get(d.index)
        where = (f"blocks {d.first_block}–{d.first_block + d.n_blocks - 1}" if d.n_blocks else "no blocks") + \
            (" + output head" if d.output else "")
        rows = [f"**GPU{d.index} · {markdown_safe_name(d.name)}** — planned {d.n_layers} layers ({where})"
                + (", main GPU" if d.main and plan.split_mode == "row" else ""),
                "", "| | predicted | measured | error |", "|---|---:|---:|---:|"]
        for key, label in _LABELS:
            p, m = getattr(d.memory, key), getattr(measured, key)
            rows.append(f"| {label} | {format_bytes(p)} | {format_bytes(m)} | {_error(p, m)} |")
        if held is not None:
            rows.append(f"| runtime overhead | {format_bytes(d.memory.overhead)} | {format_bytes(held - measured.total)} | "
                        f"{_error(d.memory.overhead, held - measured.total)} |")
            rows.append(f"| total (driver) | {format_bytes(d.memory.total)} | {format_bytes(held)} | "
                        f"{_error(d.memory.total, held)} |")
        else:
            rows.append(f"| total | {format_bytes(d.memory.total)} | driver reading unavailable | |")
        rows.append(f"| usable before the load | {format_bytes(d.usable_bytes)} | | |")
        cards.append("\n".join(rows))
    split = ",".join(f"{w:g}" for w in plan.tensor_split)
    if plan.backend == "transformers":
        head = f"**Blocks over {len(plan.devices)} GPUs** (an explicit accelerate device map)"
    else:
        head = (f"**Split over {len(plan.devices)} GPUs**: {plan.split_mode}" + (f", tensor_split {split}" if split else "")
                + (f", main GPU {plan.main_gpu}" if plan.split_mode != "layer" else ""))
    return [head, *cards]


def _prediction(plan: Optional[Plan], on_gpu: int, total: int, gpus: list[str], devices: dict[str, MemoryBreakdown],
                overhead: dict[str, int], tokens_per_s: Optional[float], experts_in_ram: int = 0) -> str:
    if plan is None:
        return "Prediction: no prediction yet (no plan was made for this load)."
    rows = ["| | predicted | measured | error |", "|---|---:|---:|---:|",
            f"| GPU layers | {plan.n_gpu_layers}/{plan.n_layer + 1} | {on_gpu}/{total} | |"]
    if plan.n_cpu_moe or experts_in_ram:  # expert offload: where the experts are
        rows.append(f"| layers with their experts in RAM | {plan.n_cpu_moe}/{plan.n_layer} | "
                    f"{experts_in_ram}/{plan.n_layer} | |")
    gpu = _sum([devices[d] for d in gpus])
    for side, predicted, measured in (("GPU", plan.gpu, gpu), ("CPU", plan.cpu, devices.get("CPU", MemoryBreakdown()))):
        for key, label in _LABELS:
            p, m = getattr(predicted, key), getattr(measured, key)
            if p or m:
                rows.append(f"| {side} {label} | {format_bytes(p)} | {format_bytes(m)} | {_error(p, m)} |")
    if overhead:
        m = sum(overhead.values())
        rows.append(f"| GPU runtime overhead | {format_bytes(plan.gpu.overhead)} | {format_bytes(m)} | "
                    f"{_error(plan.gpu.overhead, m)} |")
        held = gpu.total + m
        rows.append(f"| GPU total | {format_bytes(plan.gpu.total)} | {format_bytes(held)} | "
                    f"{_error(plan.gpu.total, held)} |")
    if tokens_per_s:
        rows.append(f"| decode tokens/s | {plan.tokens_per_s:.1f} | {tokens_per_s:.1f} (last reply) | "
                    f"{_error(plan.tokens_per_s, tokens_per_s)} |")
    return "\n".join(rows)


# -- other processes on the GPU -----------------------------------------------------------------

def _who(processes: Sequence, limit: int = 5) -> str:
    ranked = sorted(processes, key=lambda p: -(p.used_bytes or 0))
    names = [f"{markdown_safe_name(p.name)} (pid {p.pid}, "
             f"{format_bytes(p.used_bytes) if p.used_bytes is not None else 'size not reported'})"
             for p in ranked[:limit]]
    more = len(ranked) - limit
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def vram_warnings(gpus: Sequence[GpuSample], plan: Optional[Plan] = None, model: Optional[LoadedModel] = None,
                  min_bytes: int = GIB, min_fraction: float = 0.10) -> list[str]:
    """Warnings naming the other processes whose VRAM changes what fits.

    On a GPU the model uses (or the plan puts it on, GPU 0): when the memory left beside the other
    processes is less than the model needs (the plan's GPU total, else what the worker holds), or,
    for a partial offload, when they hold at least a layer's worth. On any other GPU: when they hold
    at least ``min_bytes`` or ``min_fraction`` of it. No warning where the driver's list does not
    show the worker although the model is on that GPU: then nobody can be told apart.
    """
    out = []
    measured = measured_breakdown(model.buffers) if model else {}
    on_gpu, total_layers = (layers_on_gpu(model.n_layer, model.n_gpu_layers, model.gpu_offload_supported)
                            if model else (0, 0))
    for g in gpus:
        if g.processes is None or g.memory_total_bytes is None:
            continue
        others = g.others()
        held = sum(p.used_bytes or 0 for p in others)
        if not others:
            continue
        left = g.memory_total_bytes - held
        who = _who(others)
        needed, layers_here = None, 0
        worker = g.process_bytes("worker") or 0
        if not worker and f"GPU{g.index}" in measured:
            continue  # our model is on this GPU but not in the driver's list (another PID namespace,
            # e.g. a container): its memory would pass for another program's
        if plan is not None and g.index == 0 and plan.gpu.total:
            needed, layers_here = plan.gpu.total, plan.n_gpu_layers
        elif worker or f"GPU{g.index}" in measured:
            needed = worker or measured[f"GPU{g.index}"].total
            layers_here = on_gpu
        if needed:
            if left < needed:
                out.append(f"⚠️ Other processes hold {format_bytes(held)} of GPU{g.index}: {who}. Beside them only "
                           f"{format_bytes(left)} is left, less than this placement needs "
                           f"({format_bytes(needed)}): a reload now would get fewer GPU layers.")
                continue
            n_total = plan.n_layer + 1 if plan is not None and g.index == 0 and plan.gpu.total else total_layers
            if 0 < layers_here < n_total:
                per_layer = needed / layers_here
                extra = min(int(held // per_layer), n_total - layers_here)
                if extra >= 1:
                    out.append(f"⚠️ Other processes hold {format_bytes(held)} of GPU{g.index}: {who}. Without them "
                               f"about {extra} more layer{'s' if extra > 1 else ''} would fit on the GPU.")
            continue
        if held >= min_bytes or held >= min_fraction * g.memory_total_bytes:
            out.append(f"⚠️ Other processes hold {format_bytes(held)} of GPU{g.index}: {who}. A model loaded now "
                       f"gets only the {format_bytes(left)} left.")
    return out
