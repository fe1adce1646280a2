"""Slot choice for continuous batching: a reply takes the free slot whose cache shares the longest
prefix with its prompt, else the least recently used; at least one prompt token is left to evaluate."""
from __future__ import annotations

import pytest

from backends.llama_slots import SlotPool, common_prefix


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_takes_the_slot_with_the_longest_shared_prefix():
    pool = SlotPool(3)
    pool.slots[0].tokens = [9, 9]
    pool.slots[1].tokens = [1, 2, 3, 4]
    pool.slots[2].tokens = [1, 2]
    slot, cached = pool.take([1, 2, 3, 4, 5])
    assert slot.seq_id == 1 and cached == 4 and slot.busy
    assert pool.in_use() == 1


def test_a_whole_cached_prompt_still_leaves_one_token_to_evaluate():
    pool = SlotPool(1)
    pool.slots[0].tokens = [1, 2, 3]
    slot, cached = pool.take([1, 2, 3])
    assert cached == 2


def test_without_a_shared_prefix_the_least_recently_used_free_slot_is_taken():
    pool = SlotPool(2)
    first, _ = pool.take([5])
    pool.release(first)
    second, _ = pool.take([6])
    assert second is not first  # the other one was used longer ago (never)
    pool.release(second)
    assert pool.take([7])[0] is first


def test_busy_slots_are_never_taken_and_a_full_pool_says_so():
    pool = SlotPool(1)
    pool.take([1, 2])
    assert not pool.has_free()
    with pytest.raises(RuntimeError):
        pool.take([1, 2])
