"""Slots: the sequences of one llama.cpp context. A reply runs in one slot (sequence id); the slot
remembers the tokens its KV cache holds, so the next reply that starts with the same tokens (the next
turn of a conversation) evaluates only what is new.

A reply takes the free slot whose cache shares the longest prefix with its prompt (the least recently
used one when none does). When the reply ends the slot is free at once for any other reply; what its
cache holds stays as that slot's prefix cache until another reply overwrites it. The KV cache is not
unified, so each slot's cells are its own and a kept prefix costs no other reply any room.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # exactly what this sequence's KV cache holds
    busy: bool = False
    last_used: float = 0.0


class SlotPool:
    def __init__(self, n: int) -> None:
        self.slots = [Slot(i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.slots)

    def in_use(self) -> int:
        return sum(s.busy for s in self.slots)

    def has_free(self) -> bool:
        return any(not s.busy for s in self.slots)

    def take(self, prompt: Sequence[int]) -> tuple[Slot, int]:
        """The best free slot for ``prompt`` and how many of its cached tokens the prompt can reuse
        (at most all but the last prompt token: one must be evaluated to get logits)."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            raise RuntimeError("no free slot")
        limit = max(0, len(prompt) - 1)
        best = max(free, key=lambda s: (min(common_prefix(s.tokens, prompt), limit), -s.last_used))
        best.busy = True
        best.last_used = time.monotonic()
        return best, min(common_prefix(best.tokens, prompt), limit)

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
