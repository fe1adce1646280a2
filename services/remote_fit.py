"""Plan a Hub repo's files for a machine before downloading them: the GGUF headers read in parallel
(range requests), or the transformers config and safetensors headers. Shared by the Models tab and
``app.py download``."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator, Optional, Sequence

from core.hardware import Hardware
from core.hub_files import GgufModel, TransformersFiles
from core.hub_fit import FitRow, transformers_rows
from core.load_plan import ModelFacts, plan_with_best_context
from core.planner import Calibration
from services.hf_repo import HfRepo
from services.hub import HubClient, HubError, RepoListing

HEADER_WORKERS = 4


def gguf_row(hub: HubClient, listing: RepoListing, model: GgufModel, hw: Optional[Hardware],
             cal: Calibration = Calibration()) -> FitRow:
    """One GGUF model planned from its header(s); a header that cannot be read becomes the row's problem."""
    label = model.key.rsplit("/", 1)[-1]
    try:
        shape, read = hub.gguf_shape(listing.repo, listing.revision, model)
    except HubError as exc:
        return FitRow(model.key, label, model.quant, model.size, len(model.files), problem=str(exc))
    quant = shape.quantization or model.quant
    if hw is None:
        return FitRow(model.key, label, quant, model.size, len(model.files),
                      problem="hardware probing is not available", header_bytes=read)
    plan, best_ctx = plan_with_best_context(ModelFacts("llama_cpp", shape.name, shape), hw, cal)
    return FitRow(model.key, label, quant, model.size, len(model.files), plan, best_ctx, header_bytes=read)


def gguf_rows(hub: HubClient, listing: RepoListing, models: Sequence[GgufModel], hw: Optional[Hardware],
              cal: Calibration = Calibration(), workers: int = HEADER_WORKERS) -> Iterator[FitRow]:
    """Rows as their headers arrive (a few requests in parallel)."""
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(gguf_row, hub, listing, m, hw, cal) for m in models]
        for future in as_completed(futures):
            yield future.result()


def transformers_fit(hub: HubClient, listing: RepoListing, hw: Hardware,
                     cal: Calibration = Calibration()) -> tuple[list[FitRow], TransformersFiles, HfRepo]:
    """One row per quantisation the checkpoint loads with, what a download takes, and the checked repo.
    HubError when the repo is refused (pickle-only, remote code, corrupt headers...)."""
    repo, selection, read = hub.transformers_repo(listing)
    size = sum(f.size for f in selection.files)
    rows = transformers_rows(repo.dims, repo.tensors, repo.quant_method, size, len(selection.files), hw, read, cal)
    return rows, selection, repo
