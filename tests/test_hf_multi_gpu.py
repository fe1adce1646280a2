"""transformers over several GPUs (core/hf_multi_gpu.py): blocks per GPU in proportion to the room
each has, the embeddings on the first GPU and the head on the last, max_memory per GPU."""
from __future__ import annotations

import pytest

from core.hf_memory import GIB, HfMemorySettings, RuntimeOverhead, estimate_memory
from core.hf_model_shape import ModelDims, tensors_from_dims
from core.hf_multi_gpu import spread_over_gpus

LLAMA31_8B = ModelDims("llama", 32, 4096, 32, 8, 128, 14336, 128256, 131072)
LLAMA2_13B = ModelDims("llama", 40, 5120, 40, 40, 128, 13824, 32000, 4096)
S = HfMemorySettings("nf4", "bf16", n_ctx=4096)


def spread(dims, budgets_gib, settings=S):
    return spread_over_gpus(dims, tensors_from_dims(dims), settings, [int(b * GIB) for b in budgets_gib])


@pytest.mark.parametrize("dims,budgets,blocks", [
    (LLAMA31_8B, (20, 20), (16, 16)),           # equal GPUs: half each
    (LLAMA31_8B, (20, 10), None),               # unequal: more on the roomier one
    (LLAMA2_13B, (6, 6, 6), None),              # three 6 GiB budgets together hold a 13B NF4 + 3 GiB of KV
])
def test_blocks_spread_by_room(dims, budgets, blocks):
    multi = spread(dims, budgets)
    counts = tuple(s.n_blocks for s in multi.gpus)
    assert sum(counts) == dims.n_layer and multi.estimate.fully_on_gpu and multi.estimate.fits
    if blocks:
        assert counts == blocks
    if budgets[0] > budgets[1]:
        assert counts[0] > counts[1]
    # every GPU within its budget; the sum is the estimate's GPU total
    assert all(s.memory.total <= s.budget_bytes for s in multi.gpus)
    assert multi.estimate.gpu.total == sum(s.memory.total for s in multi.gpus)
    # contiguous blocks, in GPU order; embeddings on GPU 0, the head on the last GPU with blocks
    dm = multi.estimate.device_map
    order = [dm[f"model.layers.{i}"] for i in range(dims.n_layer)]
    assert order == sorted(order)
    assert dm["model.embed_tokens"] == 0 and dm["lm_head"] == max(order)
    assert multi.max_memory == {**{i: int(b * GIB) for i, b in enumerate(budgets)}, "cpu": 0}


def test_one_small_gpu_cannot_but_two_can():
    one = estimate_memory(LLAMA2_13B, tensors_from_dims(LLAMA2_13B), S, 8 * GIB)
    two = spread(LLAMA2_13B, (8, 8))
    assert not one.fully_on_gpu and two.estimate.gpu_blocks > one.gpu_blocks


def test_what_fits_nowhere_stays_in_ram_streamed_to_gpu0():
    multi = spread(LLAMA2_13B, (2.5, 2.5))
    est = multi.estimate
    assert 0 < est.gpu_blocks < LLAMA2_13B.n_layer and est.cpu.weights > 0
    assert est.device_map[f"model.layers.{LLAMA2_13B.n_layer - 1}"] == "cpu"
    assert multi.gpus[0].memory.compute > multi.gpus[1].memory.compute  # the staging of a streamed block
    assert est.fits


def test_budgets_are_checked():
    with pytest.raises(ValueError):
        spread_over_gpus(LLAMA31_8B, tensors_from_dims(LLAMA31_8B), S, [])
    with pytest.raises(ValueError):
        spread_over_gpus(LLAMA31_8B, tensors_from_dims(LLAMA31_8B), S, [GIB, -1])


def test_each_gpu_pays_its_own_cuda_context():
    multi = spread_over_gpus(LLAMA31_8B, tensors_from_dims(LLAMA31_8B), S, [20 * GIB, 20 * GIB],
                             RuntimeOverhead(cuda_context_bytes=500 << 20))
    assert [s.memory.overhead for s in multi.gpus] == [500 << 20, 500 << 20]
