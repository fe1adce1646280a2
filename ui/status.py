"""One Markdown line that says what model is loaded, where, and how (or why none is)."""
from __future__ import annotations

from backends.base import ModelInfo
from backends.manager import ManagerState


def _placement(info: ModelInfo) -> str:
    if not info.gpu_offload_supported:
        why = "this llama.cpp build has no GPU offload" if info.backend == "llama_cpp" else "torch sees no CUDA GPU"
        return f"CPU only ({why})"
    total = info.n_layer + 1  # the blocks plus the output head
    on_gpu = total if info.n_gpu_layers < 0 or info.n_gpu_layers >= total else info.n_gpu_layers
    if on_gpu == 0:
        return "CPU only (0 layers on the GPU)"
    return f"GPU: {on_gpu}/{total} layers"


def describe_model(info: ModelInfo) -> str:
    if info.backend == "remote":
        endpoint = info.path.split(":", 1)[0]
        context = f"context {info.n_ctx:,}" if info.n_ctx else "context as the server allows"
        return (f"**{info.name}** · remote engine **{endpoint}** · {context} · runs on the remote server "
                f"(speed measured here) · connected in {info.load_seconds:.1f} s")
    template = ("chat template from the model file" if info.template_origin != "chatml-fallback"
                else "**the model has no chat template: using ChatML**")
    return (f"**{info.name}** · {info.backend} · context {info.n_ctx:,} (trained {info.n_ctx_train:,}) · "
            f"{_placement(info)} · KV {info.kv_type} · flash attention {'on' if info.flash_attn else 'off'} · "
            f"{info.n_threads} threads · {_slots(info.n_parallel)} · loaded in {info.load_seconds:.1f} s · {template}")


def _slots(n: int) -> str:
    return "one reply at a time" if n <= 1 else f"{n} replies at once"


def running_line(state: ManagerState) -> str:
    """How many replies the model is generating now, out of how many it can at once."""
    if not state.running:
        return ""
    return f"{state.running} of {state.slots} {'reply' if state.slots == 1 else 'replies'} running"


def format_status(state: ManagerState) -> str:
    if state.status == "ready" and state.info is not None:
        warning = state.plan.warning if state.plan is not None else ""
        running = running_line(state)
        return ("**Ready** · " + (f"{running} · " if running else "") + describe_model(state.info)
                + (f"\n\n⚠️ {warning}" if warning else ""))
    name = state.spec.display_name if state.spec else ""
    if state.status == "loading":
        return f"**Loading** {name}…"
    if state.status == "crashed":
        return f"**Model worker crashed.** {state.error}"
    if state.status == "failed":
        return f"**Load failed.** {state.error}"
    return "**No model loaded.** Pick one under **Model** and press **Load**."


def status_dict(state: ManagerState, waiting: int = 0) -> dict:
    """The same facts for API clients and tests (``waiting``: replies in line for the model)."""
    info = state.info
    return {
        "status": state.status,
        "model": info.name if info else (state.spec.display_name if state.spec else None),
        "n_ctx": info.n_ctx if info else None,
        "template_origin": info.template_origin if info else None,
        "worker_pid": info.worker_pid if info else None,
        "generating": state.generating,
        "running": state.running,
        "slots": state.slots,
        "waiting": waiting,
        "error": state.error,
    }
