"""A llama.cpp model on several GPUs: which GPU holds which layers for a ``tensor_split``, the bytes
on each GPU, and the decode speed. ``core.multi_gpu_plan`` chooses the split; this module only
evaluates a given one.

How llama.cpp places layers (src/llama-model.cpp ``load_tensors``, llama-cpp-python 0.3.36):
* The input embedding stays in host memory. With ``n_gpu_layers = N`` the last N-1 blocks and
  the output head are offloaded; the offloaded layer j of N goes to the first GPU whose cumulative
  normalised ``tensor_split`` is greater than j/N (all zeros = split by free memory). So integer
  counts as the split place exactly that many layers on each GPU, in GPU order.
* ``split_mode`` layer: each layer, its weights and its KV cache on one GPU. row: the same layer
  assignment for the KV cache and small tensors, but every matrix is cut by rows across all GPUs
  by the split (the main GPU gathers the results). none: the main GPU alone.
* Every GPU in the model's device list gets a CUDA context and its own compute buffer. When all
  layers are on GPUs, the split is by layer and no tensor is overridden (no experts in RAM),
  pipeline parallelism keeps 4 copies of each GPU's graph inputs (GGML_SCHED_MAX_COPIES); the KQ
  mask is one of them and grows with the context.
* Mixture of experts: a block's experts live with it on its GPU; ``n_cpu_moe=N`` keeps those of
  blocks 0..N-1 in RAM wherever the block is (a tensor override, as ``--n-cpu-moe``).
* Decode at batch 1 runs the GPUs one after the other (layer split): time is the sum over GPUs of
  their bytes / bandwidth, plus a hand-over between GPUs. Row split runs them together but syncs
  at every matrix multiply over the PCIe link.
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, Optional, Sequence

from core.hardware import Hardware, gpu_summary, pcie_bytes_per_s
from core.model_shape import ModelShape, type_bytes_per_value
from core.plan import DevicePlan, MemoryBreakdown, Plan
from core.planner import (GIB, MIB, Calibration, compute_buffer_bytes, context_and_cache_fit, cpu_only_reason,
                          gpu_block_stage_bytes, gpu_compute_buffers, kv_bytes, moe_compute_bytes, pad_ctx, ram_reason)

SplitMode = Literal["layer", "row", "none"]
SPLIT_MODES: tuple[str, ...] = ("layer", "row", "none")
SPLIT_MODE_IDS = {"none": 0, "layer": 1, "row": 2}  # llama.cpp's LLAMA_SPLIT_MODE_*
PIPELINE_COPIES = 4               # GGML_SCHED_MAX_COPIES
HANDOVER_S = 25e-6                # per token per GPU boundary: copy the activations, sync an event
ROW_SYNC_S = 40e-6                # per split matrix multiply: broadcast the input, gather the results (a guess
                                  # until bench/gpu_session_issue17.sh measures it)
ROW_MATMULS_PER_LAYER = 7         # q, k, v, o, gate, up, down
DEFAULT_PCIE_BYTES_PER_S = 12e9   # when the link is not reported


@dataclass(frozen=True)
class Split:
    """How the offloaded layers are spread: one weight per GPU of the machine (llama.cpp's
    ``tensor_split``), the split mode and the main GPU."""
    mode: SplitMode
    weights: tuple[float, ...]
    main_gpu: int = 0

    def __post_init__(self) -> None:
        if self.mode not in SPLIT_MODES:
            raise ValueError(f"split mode must be one of {', '.join(SPLIT_MODES)} (got {self.mode!r})")
        if not self.weights or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("tensor_split needs non-negative weights that add up to more than 0")
        if not 0 <= self.main_gpu < len(self.weights):
            raise ValueError(f"main_gpu {self.main_gpu} is not one of the {len(self.weights)} GPUs")


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def layer_devices(n_layer: int, n_gpu_layers: int, weights: Sequence[float]) -> tuple[int, ...]:
    """The GPU (position in ``weights``) of each block and, last, of the output head; -1 = CPU.
    llama.cpp's rule, in float32 as it computes it."""
    return _layer_devices(n_layer, n_gpu_layers, tuple(float(w) for w in weights))


@lru_cache(maxsize=4096)
def _layer_devices(n_layer: int, n_gpu_layers: int, weights: tuple[float, ...]) -> tuple[int, ...]:
    n_dev = len(weights)
    total, cumulative = 0.0, []
    for w in weights:
        total = _f32(total + _f32(w))
        cumulative.append(total)
    cumulative = [_f32(c / total) for c in cumulative]
    ngl = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    start = max(n_layer + 1 - ngl, 0)
    out = []
    for il in range(n_layer + 1):
        if il < start or ngl == 0:
            out.append(-1)
        else:
            out.append(min(bisect_right(cumulative, _f32((il - start) / ngl)), n_dev - 1))
    return tuple(out)


def counts_of(devices: Sequence[int], n_dev: int) -> tuple[int, ...]:
    """Layers (blocks + output head) per GPU."""
    return tuple(sum(1 for d in devices if d == i) for i in range(n_dev))


def _runs(devices: Sequence[int], n_layer: int, gpu: int) -> tuple[int, int, bool]:
    blocks = [i for i in range(n_layer) if devices[i] == gpu]
    return (blocks[0] if blocks else 0), len(blocks), devices[n_layer] == gpu


def _compute(shape: ModelShape, n_ctx: int, ub: int, flash_attn: bool, has_blocks: bool, has_output: bool,
             receives: bool, pipeline: bool) -> int:
    """One GPU's compute buffer: the worst stage it runs (fitted formulas of ``core.planner``)."""
    stage = 0
    if has_blocks:
        stage = gpu_block_stage_bytes(shape, n_ctx, ub, flash_attn)
    if has_output:
        stage = max(stage, ub * 4 * (shape.n_vocab + shape.n_embd))
    if not stage:
        return 0
    if receives:
        stage += 2 * ub * 4 * shape.n_embd  # activations arriving from another device
    if pipeline:
        mask = pad_ctx(n_ctx) * ub * (2 if flash_attn else 4)
        stage += (PIPELINE_COPIES - 1) * (ub * 4 * shape.n_embd + mask)
    return stage


def evaluate_split(shape: ModelShape, hw: Hardware, n_gpu_layers: int, n_ctx: int, split: Split,
                   kv_type: str = "f16", flash_attn: bool = True, n_ubatch: int = 512,
                   cal: Calibration = Calibration(), goal: str = "", n_cpu_moe: int = 0) -> Plan:
    """The plan for one configuration on a machine with several GPUs (``split`` has one weight per
    GPU of ``hw``). ``split.mode == "none"`` plans the main GPU alone. ``n_cpu_moe=N`` (an MoE model)
    keeps the routed experts of blocks 0..N-1 in RAM, wherever their block is (``--n-cpu-moe``)."""
    if len(split.weights) != len(hw.gpus):
        raise ValueError(f"tensor_split has {len(split.weights)} entries for {len(hw.gpus)} GPUs")
    n = shape.n_layer
    ngl = n + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n + 1)
    if split.mode == "none":
        weights = tuple(1.0 if i == split.main_gpu else 0.0 for i in range(len(hw.gpus)))
    else:
        weights = split.weights
    devices = layer_devices(n, ngl, weights)
    visible = [split.main_gpu] if split.mode == "none" else list(range(len(hw.gpus)))
    kv_b = type_bytes_per_value(kv_type)
    cpu_blocks = [i for i in range(n) if devices[i] < 0]
    first_gpu = next((d for d in devices if d >= 0), -1)
    row_share = [w / sum(weights) for w in weights]
    moe_n = min(max(n_cpu_moe, 0), n) if shape.is_moe else 0
    cpu_experts = [i for i in range(moe_n) if devices[i] >= 0]
    # llama.cpp turns pipeline parallelism off with tensor overrides (the experts kept in RAM)
    pipeline = split.mode == "layer" and len(visible) > 1 and ngl == n + 1 and not cpu_experts
    experts_in_ram = sum(shape.block_expert_bytes(i) for i in cpu_experts)
    moe_extra = moe_compute_bytes(shape, n_ubatch, cal)
    plans, tied_copy = [], shape.token_embd_bytes if shape.output_tied else 0
    for g in visible:
        first, n_blocks, output = _runs(devices, n, g)
        blocks = range(first, first + n_blocks)
        if split.mode == "row":
            # matrices cut across all GPUs; this GPU's layers keep their norms and KV cache here
            matrix = sum(shape.block_bytes[i] for i in range(n) if devices[i] >= 0)
            norms = 2 * 4 * shape.n_embd * n_blocks
            w = int((matrix - experts_in_ram) * row_share[g]) + norms + (shape.output_bytes if output else 0)
        else:
            w = (sum(shape.block_bytes[i] for i in blocks) + (shape.output_bytes if output else 0)
                 - sum(shape.block_expert_bytes(i) for i in cpu_experts if devices[i] == g))
        kv = kv_bytes(shape, blocks, n_ctx, kv_type)
        if split.mode == "row":
            main = g == split.main_gpu
            c = (_compute(shape, n_ctx, n_ubatch, flash_attn, ngl > 1, devices[n] >= 0, bool(cpu_blocks), False)
                 if main else int(n_ubatch * 4 * 3 * shape.n_ff * row_share[g]))
        elif split.mode == "none" and ngl == 0:
            c = gpu_compute_buffers(shape, n_ctx, 0, n_ubatch, flash_attn)[0]
        else:
            receives = (g != first_gpu) or bool(cpu_blocks)
            c = _compute(shape, n_ctx, n_ubatch, flash_attn, n_blocks > 0, output, receives and n_blocks + output > 0,
                         pipeline)
            if g == visible[0] and ngl == 0:
                c = gpu_compute_buffers(shape, n_ctx, 0, n_ubatch, flash_attn)[0]  # stages the output head
        if n_blocks and moe_extra:
            c += moe_extra
        gpu = hw.gpus[g]
        plans.append(DevicePlan(index=gpu.index, name=gpu.name,
                                memory=MemoryBreakdown(w, kv, c, cal.gpu_overhead_bytes),
                                usable_bytes=gpu.free_bytes - cal.vram_margin_bytes, first_block=first,
                                n_blocks=n_blocks, output=output,
                                main=(g == split.main_gpu) if split.mode != "layer" else g == visible[0]))
    w_cpu = (sum(shape.block_bytes[i] for i in cpu_blocks) + shape.token_embd_bytes + shape.other_bytes
             + (0 if devices[n] >= 0 else shape.output_bytes - tied_copy) + experts_in_ram)
    c_cpu = gpu_compute_buffers(shape, n_ctx, ngl, n_ubatch, flash_attn)[1] if plans else \
        compute_buffer_bytes(shape, n_ctx, n_ubatch, flash_attn)
    c_cpu += moe_extra if (cpu_blocks or cpu_experts) else 0
    cpu = MemoryBreakdown(w_cpu, kv_bytes(shape, cpu_blocks, n_ctx, kv_type), c_cpu,
                          cal.host_overhead_bytes + shape.n_vocab * 4)
    seconds = decode_seconds(shape, hw, devices, split, kv_b, kv_type, cal, cpu_experts)
    plan = _assemble(shape, hw, ngl, n_ctx, kv_type, flash_attn, split, weights, tuple(plans), cpu, seconds, cal, goal)
    if not cpu_experts:
        return plan
    note = f"the experts of {len(cpu_experts)} of {n} layers in RAM ({experts_in_ram / GIB:.1f} GiB)"
    return replace(plan, n_cpu_moe=moe_n, fit="partial" if plan.fit == "full_gpu" else plan.fit,
                   reasons=plan.reasons + (note,))


def decode_seconds(shape: ModelShape, hw: Hardware, devices: Sequence[int], split: Split, kv_b: float,
                   kv_type: str, cal: Calibration, cpu_experts: Sequence[int] = ()) -> float:
    """Seconds per token at batch 1 (the roofline of ``core.planner``, per GPU). An MoE block is read
    as far as a token is routed (``active_block_bytes``); experts in RAM are read there."""
    n, ctx = shape.n_layer, cal.eval_context
    moved = {i: shape.block_expert_bytes(i) * shape.n_expert_used / shape.n_expert for i in cpu_experts}
    layer_bytes = [shape.active_block_bytes(i) - moved.get(i, 0.0) + ctx * shape.kv_bytes_per_token(i, kv_b, kv_b)
                   for i in range(n)]
    per_layer = cal.gpu_layer_overhead_s + (cal.gpu_quantized_kv_layer_s if kv_type != "f16" else 0.0)
    seconds = cal.token_cost_s(shape.n_vocab)
    on_gpu = [i for i in range(n) if devices[i] >= 0]

    def rate(g: int) -> float:
        return cal.gpu_bytes_per_s(hw.gpus[g].bandwidth_bytes_per_s)

    if split.mode == "row" and on_gpu:
        total = len(split.weights)
        shares = [w / sum(split.weights) for w in split.weights]
        slowest = max(shares[g] / rate(g) for g in range(total))
        read = [shape.active_block_bytes(i) - moved.get(i, 0.0) for i in on_gpu]
        seconds += sum(read) * slowest
        seconds += sum(layer_bytes[i] - r for i, r in zip(on_gpu, read)) / rate(split.main_gpu)
        links = [pcie_bytes_per_s(g) or DEFAULT_PCIE_BYTES_PER_S for g in hw.gpus]
        per_sync = ROW_SYNC_S + (total - 1) * 2 * 4 * shape.n_ff / min(links)
        seconds += len(on_gpu) * ROW_MATMULS_PER_LAYER * per_sync
    else:
        for i in on_gpu:
            seconds += layer_bytes[i] / rate(devices[i])
    if devices[n] >= 0:
        seconds += shape.output_bytes / rate(devices[n])
    if on_gpu or devices[n] >= 0:
        seconds += per_layer * (len(on_gpu) + 1)
        if shape.is_moe:
            seconds += cal.gpu_moe_layer_s * len(on_gpu)
        used = sorted({d for d in devices if d >= 0})
        if split.mode == "layer":
            seconds += HANDOVER_S * (len(used) - 1)
    cpu_bytes = (sum(layer_bytes[i] for i in range(n) if devices[i] < 0) + (shape.output_bytes if devices[n] < 0 else 0)
                 + sum(moved.values()))
    if cpu_bytes:
        seconds += cpu_bytes / cal.cpu_bytes_per_s(hw)
        if on_gpu and len(on_gpu) < n:
            seconds += cal.partial_sync_s
    seconds += cal.cpu_moe_layer_s * len(cpu_experts)
    if shape.is_moe:
        seconds += cal.cpu_moe_block_s * sum(1 for i in range(n) if devices[i] < 0)
    return seconds


def _assemble(shape: ModelShape, hw: Hardware, ngl: int, n_ctx: int, kv_type: str, flash_attn: bool, split: Split,
              weights: tuple[float, ...], devices: tuple[DevicePlan, ...], cpu: MemoryBreakdown, seconds: float,
              cal: Calibration, goal: str) -> Plan:
    reasons: list[str] = []
    over = [d for d in devices if d.memory.total > d.usable_bytes]
    ram_budget = hw.ram_available_bytes - cal.ram_margin_bytes
    for d in over:
        reasons.append(f"needs {d.memory.total / GIB:.1f} GiB on GPU{d.index} ({d.name}); "
                       f"{max(d.usable_bytes, 0) / GIB:.1f} GiB are free after a {cal.vram_margin_bytes // MIB} MiB margin")
    if cpu.total > ram_budget:
        reasons.append(ram_reason(cpu.total, ram_budget, cal))
    on = [d for d in devices if d.n_layers]
    where = ", ".join(f"GPU{d.index} {d.n_layers}" for d in on) or "none"
    if over or cpu.total > ram_budget:
        fit = "no_fit"
    elif ngl == shape.n_layer + 1:
        fit = "full_gpu"
        reasons.append(f"all {ngl} layers on {len(on)} GPU{'s' if len(on) > 1 else ''} ({where})")
    elif ngl:
        fit = "partial"
        reasons.append(f"{ngl} of {shape.n_layer + 1} layers on the GPUs ({where}); {cpu.total / GIB:.1f} GiB in RAM")
    else:
        fit = "cpu_only"
        reasons.append(cpu_only_reason(hw, cpu))
    fit = context_and_cache_fit(fit, reasons, shape, n_ctx, kv_type, flash_attn)
    total = MemoryBreakdown(*(sum(getattr(d.memory, k) for d in devices)
                              for k in ("weights", "kv_cache", "compute", "overhead")))
    return Plan(fit=fit, backend="llama_cpp", n_layer=shape.n_layer, n_gpu_layers=ngl, n_ctx=n_ctx, kv_type=kv_type,
                flash_attn=flash_attn, gpu=total, cpu=cpu, tokens_per_s=round(1.0 / seconds, 2),
                reasons=tuple(reasons), quantization=shape.quantization, goal=goal, devices=devices,
                split_mode=split.mode, tensor_split=weights if split.mode != "none" else (), main_gpu=split.main_gpu)


def describe_split(plan: Plan, hw: Optional[Hardware] = None) -> str:
    """One line: mode, split and each GPU's layers, e.g. ``layer split 20,13 over 2 × RTX 3090``."""
    if not plan.devices:
        return ""
    if plan.split_mode == "none":
        name = next((d.name for d in plan.devices if d.index == plan.main_gpu), "")
        return f"split_mode none: GPU{plan.main_gpu} {name} alone".rstrip()
    ratio = ",".join(f"{w:g}" for w in plan.tensor_split)
    over = gpu_summary(hw.gpus) if hw is not None else f"{len(plan.devices)} GPUs"
    return f"{plan.split_mode} split, tensor_split {ratio} over {over}"


def llama_split_args(split_mode: str, tensor_split: Optional[Sequence[float]], main_gpu: Optional[int],
                     max_devices: int = 16) -> tuple[int, Optional[tuple[float, ...]], int]:
    """(``split_mode`` id, ``tensor_split`` padded to llama.cpp's device count or None, ``main_gpu``)
    for ``llama_model_params``; "auto" (one GPU, or no plan) is llama.cpp's default, a layer split."""
    mode = SPLIT_MODE_IDS.get(split_mode, SPLIT_MODE_IDS["layer"])
    weights = None
    if tensor_split:
        if len(tensor_split) > max_devices:
            raise ValueError(f"tensor_split has {len(tensor_split)} entries; this llama.cpp handles {max_devices}")
        weights = tuple(float(w) for w in tensor_split) + (0.0,) * (max_devices - len(tensor_split))
    return mode, weights, main_gpu or 0


def device_rows(plan: Plan) -> list[str]:
    """``app.py plan``'s table rows, one per GPU (the same columns as its GPU and RAM rows)."""
    gib = lambda n: f"{n / GIB:6.2f} GiB"  # noqa: E731
    rows = []
    for d in plan.devices:
        m = d.memory
        where = (f"blocks {d.first_block}-{d.first_block + d.n_blocks - 1}" if d.n_blocks else "no blocks") + \
            (" + output" if d.output else "")
        rows.append(f"  GPU{d.index:<5}{gib(m.weights)}  {gib(m.kv_cache)}  {gib(m.compute)}  {gib(m.overhead)}  "
                    f"{gib(m.total)}  of {d.usable_bytes / GIB:.2f} usable; {d.n_layers} layers ({where}); {d.name}")
    return rows
