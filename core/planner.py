"""Plan a llama.cpp load: bytes on the GPU and in RAM, and decode speed, before loading anything.

Model (validated against llama.cpp's own buffer sizes and NVML, see docs/BENCHMARKS.md):
* ``n_gpu_layers = N`` puts the output head plus the last N-1 blocks on the GPU (all of them
  when N >= n_layer + 1). The input embedding always stays in host memory.
* KV cache: every layer keeps ``n_ctx`` cells (n_ctx rounded up to 256) of
  ``n_head_kv * (head_dim_k + head_dim_v)`` values of the KV type, on the device of its layer.
* Compute buffers: llama.cpp reserves the worst case of one ``n_ubatch`` step. With flash
  attention that is the larger of the FFN stage and the logits stage; a dry run of llama.cpp
  replaces this estimate when the file is on disk (``compute_override``).
* A constant per-GPU overhead (CUDA context, cuBLAS) learnt from real loads (``Calibration``).
* Decode speed: a roofline. Each token streams the weights (and the KV cache) of each device once;
  time = bytes / (bandwidth x efficiency) per device, plus a per-layer launch cost on the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Literal, Optional

from core.hardware import Hardware
from core.model_shape import ModelShape, type_bytes_per_value
from core.plan import MemoryBreakdown, Plan

MIB = 1 << 20
GIB = 1 << 30
KV_TYPES_FA = ("f16", "q8_0", "q4_0")
Goal = Literal["fastest", "context"]


@dataclass(frozen=True)
class Calibration:
    """Constants of the model above. The defaults were fitted to a sweep of real loads on an H100
    (bench/results/gpu/sweep.json, docs/BENCHMARKS.md); the app replaces the GPU overhead with what
    it measures on this machine (services.calibration)."""
    gpu_overhead_bytes: int = 598 * MIB       # CUDA context + runtime per GPU (597-599 MiB measured)
    host_overhead_bytes: int = 400 * MIB      # the worker process itself (Python, llama.cpp code)
    gpu_efficiency: float = 0.62              # share of peak GPU bandwidth reached in decode
    # ... but no more than llama.cpp's quantised mat-vec kernels stream on a GH100: 0.62 x 3.35 TB/s on the
    # H100, and the same ~2.1 TB/s on the H200 (same chip, 4.8 TB/s HBM3e; dense full-GPU rows of the issue-11
    # sweep, docs/BENCHMARKS.md), so there the SMs, not the memory, bound decode.
    gpu_max_bytes_per_s: float = 2.1e12
    gpu_layer_overhead_s: float = 48e-6       # kernel launches and syncs per offloaded layer per token
    gpu_quantized_kv_layer_s: float = 17e-6   # extra per GPU layer per token with a q8_0/q4_0 KV cache
    # CPU decode streams min(RAM probe x cpu_efficiency, cores x cpu_core_bytes_per_s). On all three 16-core
    # sweep hosts the cores bound it (~60 GB/s: H100 hosts with probes of 97/110 GB/s, the H200 host with 60
    # GB/s); the probe counts a copy as 2 bytes moved, where it moves 3 (read-for-ownership), so decode's reads
    # can reach the probe's figure. Was 0.62 / 4.5e9 (H100 only, where RAM and cores could not be told apart).
    cpu_efficiency: float = 1.0               # share of measured RAM bandwidth reached in decode
    cpu_core_bytes_per_s: float = 3.75e9      # quantised weights one core can multiply per second
    # Per-token decode cost beyond the weights: sampling over the vocabulary and the engine's own loop,
    # fitted on the one-block 32k/131k/152k-vocabulary rows of the issue-11 H200 sweep (bench/analyse_sweep.py).
    sampling_s_per_vocab: float = 2.65e-9     # sampling over the vocabulary, per token
    token_overhead_s: float = 127e-6          # the engine's loop and the logits' way out, per token
    partial_sync_s: float = 150e-6            # per token, when the model is split GPU/CPU
    default_ram_bandwidth: float = 20e9       # when the machine's is unknown
    vram_margin_bytes: int = 256 * MIB        # kept free on the GPU (predictions are within ~64 MiB)
    ram_margin_bytes: int = 1 * GIB           # kept free in RAM
    eval_context: int = 256                   # context at which decode speed is predicted

    def token_cost_s(self, n_vocab: int) -> float:
        """Seconds per decoded token that do not depend on where the weights are."""
        return n_vocab * self.sampling_s_per_vocab + self.token_overhead_s
    # Per GPU layer per token with the KV cache in RAM (copies to/from the CPU, its attention, a sync). Fitted on
    # an H200 + 16-core Xeon (tests/data/gpu_quality_kv_h200.json, docs/BENCHMARKS.md issue 15): 8B Q4_K_M, all
    # 33 layers on the GPU, KV in VRAM 223.07 tok/s, in RAM 92.05 (4k) and 89.81 (32k): 1/92.05 - 1/223.07 =
    # 6.381 ms, 1/89.81 - 1/223.07 = 6.652 ms, mean 6.516 ms per token; minus the 0.655 ms this model already
    # charges for reading the KV cache from RAM = 5.861 ms over 32 blocks = 183 us (one layer count measured).
    kv_ram_layer_s: float = 183e-6
    # Mixture of experts. First estimates from the issue-11 anchors (a 30B-A3B on an H200: 211 tokens/s
    # full GPU through the app's engine; llama-bench -ncmoe 16 at 91); refit them from the GPU sweep
    # with bench/analyse_sweep.py (its "refit" section) and change them here, the one place.
    gpu_moe_layer_s: float = 0.0              # extra per MoE layer on the GPU per token (router, top-k, gathers)
    cpu_moe_layer_s: float = 125e-6           # per layer whose experts are in RAM, per token (copies, syncs)
    cpu_moe_block_s: float = 275e-6           # per MoE block run wholly on the CPU (layer offload), per token
    moe_compute_factor: float = 1.4           # scales the MoE part of the compute buffers (see moe_compute_bytes)

    def gpu_bytes_per_s(self, bandwidth: Optional[float]) -> float:
        """Bytes per second one GPU streams in decode."""
        return min((bandwidth or 300e9) * self.gpu_efficiency, self.gpu_max_bytes_per_s)

    def cpu_bytes_per_s(self, hw: Hardware) -> float:
        """Bytes per second the CPU streams in decode: RAM- or core-bound."""
        ram = (hw.ram_bandwidth_bytes_per_s or self.default_ram_bandwidth) * self.cpu_efficiency
        return min(ram, max(hw.cpu_physical_cores, 1) * self.cpu_core_bytes_per_s)


def pad_ctx(n_ctx: int) -> int:
    return -(-n_ctx // 256) * 256


def default_context(shape: ModelShape, requested: Optional[int] = None) -> int:
    if requested:
        return requested
    return min(4096, shape.n_ctx_train) if shape.n_ctx_train else 4096


def compute_buffer_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int = 512, flash_attn: bool = True) -> int:
    """llama.cpp's worst-case compute buffer for one ubatch on the CPU (fitted to its dry runs)."""
    ub = n_ubatch
    logits = ub * 4 * (shape.n_vocab + 2 * shape.n_embd)
    ffn = ub * 4 * (3 * shape.n_ff + 4 * shape.n_embd)
    if flash_attn:
        return max(logits, ffn + pad_ctx(n_ctx) * ub * 2)
    attention = pad_ctx(n_ctx) * ub * (4 * shape.n_head + 4) + ub * 4 * 7 * shape.n_embd
    return max(logits, ffn, attention)


def gpu_compute_buffers(shape: ModelShape, n_ctx: int, n_gpu_layers: int, n_ubatch: int = 512,
                        flash_attn: bool = True) -> tuple[int, int]:
    """(GPU, pinned host) compute buffers of a GPU build (fitted to CUDA loads on an H100).

    Even with no layer offloaded a CUDA build reserves GPU memory: large prompt matmuls are
    offloaded, which stages the output head (the largest CPU weight) on the GPU.
    """
    ub = n_ubatch
    host = 2 * ub * 4 * shape.n_embd + pad_ctx(n_ctx) * ub * 2
    if n_gpu_layers == 0:
        return shape.output_bytes + ub * 4 * (shape.n_vocab + shape.n_embd), host
    full = max(ub * 4 * (shape.n_vocab + shape.n_embd), gpu_block_stage_bytes(shape, n_ctx, ub, flash_attn))
    if n_gpu_layers < shape.n_layer + 1:
        full += 2 * ub * 4 * shape.n_embd  # activations crossing between the devices
    return full, host


def gpu_block_stage_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int = 512, flash_attn: bool = True) -> int:
    """A GPU's compute buffer for running blocks: the FFN stage plus the f16 attention mask over the
    context (with flash attention), or the attention scores per head (without); the context term of
    every header-only VRAM estimate (one GPU and ``core.multi_gpu``)."""
    ub = n_ubatch
    stage = ub * 4 * (3 * shape.n_ff + 3 * shape.n_embd) + pad_ctx(n_ctx) * ub * 2
    if not flash_attn:
        stage = max(stage, pad_ctx(n_ctx) * ub * (4 * shape.n_head + 4) + ub * 4 * 7 * shape.n_embd)
    return stage


def moe_compute_bytes(shape: ModelShape, n_ubatch: int = 512, cal: Calibration = Calibration()) -> int:
    """What an MoE layer adds to a compute buffer for one ubatch: each token's rows gathered for its
    experts (input and output of n_embd, gate/up/activation of n_ff_exp), f32 (a first estimate: MoE
    loads measured 100-190 MiB above the dense formula; ``cal.moe_compute_factor`` is refit)."""
    if not shape.is_moe:
        return 0
    rows = n_ubatch * shape.n_expert_used
    return int(cal.moe_compute_factor * 4 * (rows * (2 * shape.n_embd + 3 * shape.n_ff_exp) + n_ubatch * shape.n_expert))


def kv_bytes(shape: ModelShape, layers: Iterable[int], n_ctx: int, kv_type: str) -> int:
    b = type_bytes_per_value(kv_type)
    return int(pad_ctx(n_ctx) * sum(shape.kv_bytes_per_token(i, b, b) for i in layers))


@dataclass(frozen=True)
class _Split:
    gpu_blocks: range
    cpu_blocks: range
    output_on_gpu: bool
    cpu_experts: range = range(0)   # blocks on the GPU whose routed experts are in RAM (expert offload)


def _split(shape: ModelShape, n_gpu_layers: int, n_cpu_moe: int = 0) -> _Split:
    """llama.cpp's placement: the last n_gpu_layers-1 blocks and the head on the GPU; with
    ``--n-cpu-moe N`` the routed experts of blocks 0..N-1 stay in RAM wherever their block is."""
    n = shape.n_layer
    ngl = n + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n + 1)
    first_gpu = n - max(ngl - 1, 0)
    moe = min(max(n_cpu_moe, 0), n) if shape.is_moe else 0
    return _Split(range(first_gpu, n), range(0, first_gpu), ngl >= 1, range(first_gpu, max(moe, first_gpu)))


def _decode_seconds(shape: ModelShape, hw: Hardware, split: _Split, kv_type: str, cal: Calibration,
                    kv_in_ram: bool = False) -> float:
    b = type_bytes_per_value(kv_type)
    ctx = cal.eval_context

    def kv_read(layers: range, tokens: int) -> float:
        return tokens * sum(shape.kv_bytes_per_token(i, b, b) for i in layers)

    head = shape.output_bytes
    # What one token reads: an MoE block only the experts it is routed to (``active_block_bytes``).
    moved = sum(shape.block_expert_bytes(i) * shape.n_expert_used / shape.n_expert for i in split.cpu_experts) \
        if split.cpu_experts else 0.0
    gpu_bytes = (sum(shape.active_block_bytes(i) for i in split.gpu_blocks) - moved
                 + (0 if kv_in_ram else kv_read(split.gpu_blocks, ctx)))
    cpu_bytes = sum(shape.active_block_bytes(i) for i in split.cpu_blocks) + kv_read(split.cpu_blocks, ctx) + moved
    if kv_in_ram:  # the CPU runs the attention of every layer over the cache
        cpu_bytes += kv_read(split.gpu_blocks, ctx)
    if split.output_on_gpu:
        gpu_bytes += head
    else:
        cpu_bytes += head
    seconds = cal.token_cost_s(shape.n_vocab)
    if gpu_bytes:
        gpu = hw.gpus[0]
        bandwidth = cal.gpu_bytes_per_s(gpu.bandwidth_bytes_per_s)
        per_layer = cal.gpu_layer_overhead_s + (cal.gpu_quantized_kv_layer_s if kv_type != "f16" else 0.0)
        seconds += gpu_bytes / bandwidth + per_layer * (len(split.gpu_blocks) + 1)
        if shape.is_moe:
            seconds += cal.gpu_moe_layer_s * len(split.gpu_blocks)
        if kv_in_ram:
            seconds += cal.kv_ram_layer_s * len(split.gpu_blocks)
    if cpu_bytes:
        seconds += cpu_bytes / cal.cpu_bytes_per_s(hw)
    if gpu_bytes and split.cpu_blocks:
        seconds += cal.partial_sync_s
    seconds += cal.cpu_moe_layer_s * len(split.cpu_experts)
    if shape.is_moe:
        seconds += cal.cpu_moe_block_s * len(split.cpu_blocks)
    return seconds


def _several_gpus(hw: Hardware) -> bool:
    return hw.can_offload and len(hw.gpus) > 1


def evaluate(shape: ModelShape, hw: Hardware, n_gpu_layers: int, n_ctx: int, kv_type: str = "f16",
             flash_attn: bool = True, n_ubatch: int = 512, cal: Calibration = Calibration(),
             compute_override: Optional[tuple[int, int]] = None, goal: str = "", gpu_split=None,
             kv_placement: str = "gpu", n_cpu_moe: int = 0) -> Plan:
    """The plan for one given configuration (no optimisation). ``compute_override`` is llama.cpp's
    own (gpu, host) compute-buffer sizes from a dry run of exactly this configuration. On several
    GPUs ``core.multi_gpu_plan`` spreads the layers (``gpu_split``: a ``SplitChoice``, what the user fixed).
    ``kv_placement="ram"`` is llama.cpp's ``offload_kqv`` off: the whole KV cache stays in RAM and the
    CPU computes attention, which frees VRAM for more layers at the price of copies per layer.
    ``n_cpu_moe=N`` (an MoE model) keeps the routed experts of blocks 0..N-1 in RAM (expert offload)."""
    if _several_gpus(hw):
        from core.multi_gpu_plan import SplitChoice, fastest_split
        return replace(fastest_split(shape, hw, n_ctx, kv_type, flash_attn, n_ubatch, cal, gpu_split or SplitChoice(),
                                     n_gpu_layers=n_gpu_layers, n_cpu_moe=n_cpu_moe), goal=goal)
    reasons: list[str] = []
    if not hw.can_offload:
        if n_gpu_layers not in (0,) and hw.has_gpu:
            reasons.append("the installed llama.cpp has no GPU offload: everything runs on the CPU")
        n_gpu_layers = 0
    split = _split(shape, n_gpu_layers, n_cpu_moe)
    ngl = len(split.gpu_blocks) + (1 if split.output_on_gpu else 0)
    on_gpu = ngl > 0
    tied_copy = shape.token_embd_bytes if shape.output_tied else 0
    experts_in_ram = sum(shape.block_expert_bytes(i) for i in split.cpu_experts)
    w_gpu = (sum(shape.block_bytes[i] for i in split.gpu_blocks) + (shape.output_bytes if split.output_on_gpu else 0)
             - experts_in_ram)
    w_cpu = (sum(shape.block_bytes[i] for i in split.cpu_blocks) + shape.token_embd_bytes + shape.other_bytes
             + (0 if split.output_on_gpu else shape.output_bytes - tied_copy) + experts_in_ram)
    moe_extra = moe_compute_bytes(shape, n_ubatch, cal)
    if compute_override is not None:
        c_gpu, c_cpu = compute_override
    elif hw.can_offload:
        c_gpu, c_cpu = gpu_compute_buffers(shape, n_ctx, ngl, n_ubatch, flash_attn)
        c_gpu += moe_extra if on_gpu else 0
        c_cpu += moe_extra if (split.cpu_blocks or split.cpu_experts) else 0
    else:
        c_gpu, c_cpu = 0, compute_buffer_bytes(shape, n_ctx, n_ubatch, flash_attn) + moe_extra
    # A GPU build holds a CUDA context and compute buffers even with no layer offloaded.
    uses_gpu = on_gpu or (hw.can_offload and c_gpu > 0)
    kv_in_ram = kv_placement == "ram" and on_gpu
    kv_gpu = kv_bytes(shape, split.gpu_blocks, n_ctx, kv_type)
    kv_cpu = kv_bytes(shape, split.cpu_blocks, n_ctx, kv_type)
    if kv_in_ram:
        kv_gpu, kv_cpu = 0, kv_cpu + kv_gpu
        c_cpu += kv_ram_compute_bytes(shape, n_ctx, n_ubatch, flash_attn)
    gpu = MemoryBreakdown(w_gpu, kv_gpu, c_gpu, cal.gpu_overhead_bytes if uses_gpu else 0)
    cpu = MemoryBreakdown(w_cpu, kv_cpu, c_cpu, cal.host_overhead_bytes + shape.n_vocab * 4)
    tokens_per_s = 1.0 / _decode_seconds(shape, hw, split, kv_type, cal, kv_in_ram)
    if kv_in_ram:
        reasons.append(f"KV cache ({kv_cpu / GIB:.2f} GiB) in RAM, attention on the CPU (prompts are processed "
                       "more slowly)")

    ram_budget = hw.ram_available_bytes - cal.ram_margin_bytes
    vram_budget = (hw.gpus[0].free_bytes - cal.vram_margin_bytes) if hw.gpus else 0
    if cpu.total > ram_budget or (uses_gpu and gpu.total > vram_budget):
        fit = "no_fit"
        if uses_gpu and gpu.total > vram_budget:
            reasons.append(f"needs {gpu.total / GIB:.1f} GiB on the GPU; {max(vram_budget, 0) / GIB:.1f} GiB "
                           f"are free after a {cal.vram_margin_bytes // MIB} MiB margin")
        if cpu.total > ram_budget:
            reasons.append(ram_reason(cpu.total, ram_budget, cal))
    elif ngl == shape.n_layer + 1 and split.cpu_experts:
        fit = "partial"
        reasons.append(f"every layer on {hw.gpus[0].name}, the experts of {len(split.cpu_experts)} of "
                       f"{shape.n_layer} layers in RAM ({experts_in_ram / GIB:.1f} GiB)")
    elif ngl == shape.n_layer + 1:
        fit = "full_gpu"
        reasons.append(f"all {ngl} layers on {hw.gpus[0].name} ({gpu.total / GIB:.1f} of "
                       f"{vram_budget / GIB:.1f} GiB usable)")
    elif on_gpu:
        fit = "partial"
        reasons.append(f"{ngl} of {shape.n_layer + 1} layers on {hw.gpus[0].name}; "
                       f"{cpu.total / GIB:.1f} GiB in RAM")
    else:
        fit = "cpu_only"
        reasons.append(cpu_only_reason(hw, cpu))
    fit = context_and_cache_fit(fit, reasons, shape, n_ctx, kv_type, flash_attn)
    return Plan(fit=fit, backend="llama_cpp", n_layer=shape.n_layer, n_gpu_layers=ngl, n_ctx=n_ctx,
                kv_type=kv_type, flash_attn=flash_attn, gpu=gpu, cpu=cpu, tokens_per_s=round(tokens_per_s, 2),
                reasons=tuple(reasons), quantization=shape.quantization, goal=goal,
                kv_placement="ram" if kv_in_ram else "gpu", n_cpu_moe=split.cpu_experts.stop if split.cpu_experts else 0)


def ram_reason(needed: int, budget: int, cal: Calibration) -> str:
    """Why a plan does not fit in RAM (one GPU and several: ``core.multi_gpu``)."""
    return (f"needs {needed / GIB:.1f} GiB of RAM; {max(budget, 0) / GIB:.1f} GiB are "
            f"available after a {cal.ram_margin_bytes // GIB} GiB margin")


def cpu_only_reason(hw: Hardware, cpu: MemoryBreakdown) -> str:
    return f"runs on the CPU ({hw.cpu_physical_cores} cores); {cpu.total / GIB:.1f} GiB in RAM"


def context_and_cache_fit(fit: str, reasons: list[str], shape: ModelShape, n_ctx: int, kv_type: str,
                          flash_attn: bool) -> str:
    """The checks that hold wherever the layers go: a context within the trained one, and a quantized
    KV cache only with flash attention. Appends their reasons; returns the fit after them."""
    if n_ctx > shape.n_ctx_train > 0:
        fit = "no_fit"
        reasons.append(f"a context of {n_ctx} is more than the model was trained for ({shape.n_ctx_train})")
    if kv_type != "f16" and not flash_attn:
        fit = "no_fit"
        reasons.append(f"a {kv_type} KV cache needs flash attention")
    return fit


def kv_ram_compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """Host compute buffer added when the CPU runs attention: the scores of one ubatch over the
    context (without flash attention) or one tile of them (with it), in f32 per head."""
    ctx = pad_ctx(n_ctx)
    scores = n_ubatch * ctx * shape.n_head * 4 if not flash_attn else n_ubatch * shape.n_embd * 4 * 4
    return int(scores + 2 * n_ubatch * shape.n_embd * 4)


def _best(plans: list[Plan]) -> Optional[Plan]:
    """The fastest plan, keeping the exact f16 KV cache unless a smaller cache type buys more
    layers on the GPU (or is the only way to fit)."""
    best: Optional[Plan] = None
    for kv in KV_TYPES_FA:
        usable = [p for p in plans if p.fit != "no_fit" and p.kv_type == kv]
        if not usable:
            continue
        candidate = max(usable, key=lambda p: (p.tokens_per_s, _on_gpu(p)))
        if best is None or (_on_gpu(candidate) > _on_gpu(best) and candidate.tokens_per_s > best.tokens_per_s):
            best = candidate
    return best


def _on_gpu(plan: Plan) -> tuple[int, int]:
    """How much of the model a plan keeps on the GPU: layers, then fewer expert layers in RAM."""
    return plan.n_gpu_layers, -plan.n_cpu_moe


def _moe_note(chosen: Plan, plans: list[Plan]) -> tuple[str, ...]:
    """Why expert offload or layer offload was chosen for an MoE model, when both were possible."""
    layer = _best([p for p in plans if not p.n_cpu_moe and p.fit == "partial"])
    expert = _best([p for p in plans if p.n_cpu_moe])
    if chosen.n_cpu_moe and layer is not None:
        return (f"expert offload ({chosen.tokens_per_s:.1f} tokens/s) is faster than the best layer offload "
                f"({layer.tokens_per_s:.1f} tokens/s, {layer.n_gpu_layers} of {layer.n_layer + 1} layers on the GPU)",)
    if chosen.fit == "partial" and not chosen.n_cpu_moe and expert is not None:
        return (f"layer offload ({chosen.tokens_per_s:.1f} tokens/s) is faster here than the best expert offload "
                f"({expert.tokens_per_s:.1f} tokens/s with the experts of {expert.n_cpu_moe} layers in RAM)",)
    return ()


def _best_placed(plans: list[Plan]) -> Optional[Plan]:
    """The best plan with the KV cache on the GPU, unless keeping it in RAM is predicted faster."""
    on_gpu = _best([p for p in plans if p.kv_placement == "gpu"])
    in_ram = _best([p for p in plans if p.kv_placement == "ram"])
    if in_ram is None or (on_gpu is not None and in_ram.tokens_per_s <= on_gpu.tokens_per_s):
        return on_gpu
    why = (f"faster than the best plan with it in VRAM ({on_gpu.tokens_per_s:.1f} tokens/s, {on_gpu.n_gpu_layers} "
           "layers)" if on_gpu is not None else "the only way to fit")
    return replace(in_ram, reasons=in_ram.reasons + (f"KV cache in RAM: {why}",))


def _fastest_at(shape: ModelShape, hw: Hardware, n_ctx: int, flash_attn: bool, n_ubatch: int,
                cal: Calibration, kv_types: tuple[str, ...], gpu_split=None,
                kv_placements: tuple[str, ...] = ("gpu",), n_cpu_moe: Optional[int] = None) -> Optional[Plan]:
    """The best plan at ``n_ctx`` over layer offload and, for an MoE model, expert offload (every
    layer on the GPU, the experts of N layers in RAM); ``n_cpu_moe`` fixed: that many, any layers."""
    if _several_gpus(hw):
        from core.multi_gpu_plan import SplitChoice, fastest_split
        best = _best([fastest_split(shape, hw, n_ctx, kv, flash_attn, n_ubatch, cal, gpu_split or SplitChoice(),
                                    n_cpu_moe=n_cpu_moe) for kv in kv_types])
        if best is None:  # every GPU too full even for llama.cpp's CUDA buffers: hide them
            best = _best([evaluate_gpu_hidden(shape, hw, n_ctx, kv, flash_attn, n_ubatch, cal) for kv in kv_types])
        return best
    layer_options = range(shape.n_layer + 2) if hw.can_offload else (0,)
    plans = [evaluate(shape, hw, ngl, n_ctx, kv, flash_attn, n_ubatch, cal, kv_placement=placement,
                      n_cpu_moe=n_cpu_moe or 0)
             for kv in kv_types for ngl in layer_options for placement in kv_placements]
    if n_cpu_moe is None and shape.is_moe and hw.can_offload:
        plans += [evaluate(shape, hw, -1, n_ctx, kv, flash_attn, n_ubatch, cal, n_cpu_moe=n)
                  for kv in kv_types for n in range(1, shape.n_layer + 1)]
    best = _best_placed(plans)
    if best is not None and shape.is_moe:
        best = replace(best, reasons=best.reasons + _moe_note(best, plans))
    if best is None and hw.can_offload:
        best = _best([evaluate_gpu_hidden(shape, hw, n_ctx, kv, flash_attn, n_ubatch, cal) for kv in kv_types])
    return best


def evaluate_as_asked(shape: ModelShape, hw: Hardware, n_gpu_layers: int, n_ctx: int, kv_type: str = "f16",
                      flash_attn: bool = True, n_ubatch: int = 512, cal: Calibration = Calibration(),
                      goal: str = "", gpu_split=None, kv_placement: str = "gpu", n_cpu_moe: int = 0) -> Plan:
    """``evaluate`` for a configuration the user chose; 0 layers on a GPU too full for llama.cpp's
    CUDA buffers runs with the GPU hidden (``evaluate_gpu_hidden``) rather than being refused."""
    plan = evaluate(shape, hw, n_gpu_layers, n_ctx, kv_type, flash_attn, n_ubatch, cal, goal=goal, gpu_split=gpu_split,
                    kv_placement=kv_placement, n_cpu_moe=n_cpu_moe)
    if plan.fit == "no_fit" and n_gpu_layers == 0 and hw.can_offload:
        hidden = evaluate_gpu_hidden(shape, hw, n_ctx, kv_type, flash_attn, n_ubatch, cal)
        if hidden.fit != "no_fit":
            return replace(hidden, goal=goal)
    return plan


def evaluate_gpu_hidden(shape: ModelShape, hw: Hardware, n_ctx: int, kv_type: str = "f16", flash_attn: bool = True,
                        n_ubatch: int = 512, cal: Calibration = Calibration()) -> Plan:
    """The model on the CPU with the GPU hidden from llama.cpp (``extra["hide_gpus"]``): a CUDA
    build keeps a CUDA context and compute buffers on the GPU even with 0 layers offloaded, so on a
    full GPU this is the only way to run. Only chosen when no plan with the GPU visible fits."""
    plan = evaluate(shape, replace(hw, llama_gpu_offload=False), 0, n_ctx, kv_type, flash_attn, n_ubatch, cal)
    return replace(plan, extra={**plan.extra, "hide_gpus": True}, reasons=plan.reasons + (
        "the GPU has no room even for llama.cpp's CUDA buffers: it is hidden from the model's worker",))


def optimise(shape: ModelShape, hw: Hardware, goal: Goal = "fastest", n_ctx: Optional[int] = None,
             flash_attn: bool = True, n_ubatch: int = 512, cal: Calibration = Calibration(),
             kv_types: Optional[tuple[str, ...]] = None, gpu_split=None,
             kv_placements: tuple[str, ...] = ("gpu",), n_cpu_moe: Optional[int] = None) -> Plan:
    """Choose n_gpu_layers, KV type (and for ``goal="context"`` the context) for this machine.

    * fastest: the highest predicted tokens/s at the requested (or default) context.
    * context: the longest context (up to the trained one) whose best plan keeps at least 80 % of
      the fastest plan's speed, i.e. more context without falling back to the CPU.
    Never plans more than the model's trained context. Returns a ``no_fit`` plan with reasons when
    nothing fits. ``kv_placements=("gpu", "ram")`` also considers the KV cache in RAM, chosen only
    when it is predicted faster. An MoE model also gets expert offload (``n_cpu_moe`` None), chosen
    when it is predicted faster, and the plan says why.
    """
    kv_options = kv_types or (KV_TYPES_FA if flash_attn else ("f16",))
    base_ctx = default_context(shape, n_ctx)
    notes: list[str] = []
    if shape.n_ctx_train and base_ctx > shape.n_ctx_train:
        notes.append(f"context capped at the model's trained {shape.n_ctx_train} tokens")
        base_ctx = shape.n_ctx_train
    fastest = _fastest_at(shape, hw, base_ctx, flash_attn, n_ubatch, cal, kv_options, gpu_split, kv_placements, n_cpu_moe)
    if fastest is None:
        # Report why with the most favourable configuration that still does not fit.
        worst = evaluate(shape, hw, -1 if hw.can_offload else 0, base_ctx, kv_options[-1], flash_attn, n_ubatch, cal,
                         gpu_split=gpu_split)
        return replace(worst, goal=goal, reasons=worst.reasons + tuple(notes))
    chosen = fastest
    if goal == "context":
        top = shape.n_ctx_train or base_ctx
        candidates = sorted({top, *[c for c in (2**k for k in range(11, 22)) if base_ctx < c < top]}, reverse=True)
        for ctx in candidates:
            plan = _fastest_at(shape, hw, ctx, flash_attn, n_ubatch, cal, kv_options, gpu_split, kv_placements, n_cpu_moe)
            if plan is not None and plan.tokens_per_s >= 0.8 * fastest.tokens_per_s:
                chosen = plan
                break
        if chosen.n_ctx > base_ctx:
            notes.append(f"longest context that keeps {chosen.tokens_per_s / fastest.tokens_per_s:.0%} of the "
                         f"fastest speed")
    if chosen.kv_type != "f16" and len(kv_options) > 1:
        notes.append(f"KV cache {chosen.kv_type} to keep more on the GPU")
    return replace(chosen, goal=goal, reasons=chosen.reasons + tuple(notes))
