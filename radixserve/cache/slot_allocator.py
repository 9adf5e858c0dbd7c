"""Free list of KV slot ids ``1..pool_size``. Slot 0 is the reserved dummy target, never handed out.

Order is deterministic. A fresh allocator hands out 1, 2, 3, ... The free list is a stack: a freed
batch goes on top in its own order and is handed out again first, so ``free([7, 3])`` followed by
``alloc(1)`` gives ``[7]`` and ``alloc(2)`` gives ``[7, 3]``. Reusing the last freed slots keeps
recently touched rows of the KV pool warm.

A bytearray of free flags makes double frees and foreign slots cheap to catch; a refused ``alloc``
or ``free`` leaves the allocator unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable


class SlotAllocator:
    def __init__(self, pool_size: int):
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.pool_size = pool_size  # usable slots, excluding the dummy slot 0
        self.reset()

    def reset(self) -> None:
        """Mark every slot free again (the caller has dropped every holder)."""
        self._free = list(range(self.pool_size, 0, -1))  # a stack: the end is handed out first
        self._is_free = bytearray(b"\x01") * (self.pool_size + 1)
        self._is_free[0] = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """Take ``n`` slots; None, taking nothing, when fewer than ``n`` are free. ``alloc(0) == []``."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} slots")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        taken.reverse()
        is_free = self._is_free
        for slot in taken:
            is_free[slot] = 0
        return taken

    def free(self, slots: Iterable[int]) -> None:
        """Give slots back. A double free or a slot outside ``1..pool_size`` raises ValueError and frees nothing."""
        slots = list(slots)
        is_free = self._is_free
        for i, slot in enumerate(slots):
            if not 1 <= slot <= self.pool_size or is_free[slot]:
                for flagged in slots[:i]:  # roll back, so a refused call changes nothing
                    is_free[flagged] = 0
                if 1 <= slot <= self.pool_size:
                    raise ValueError(f"slot {slot} freed twice")
                raise ValueError(f"slot {slot} is not in this pool (1..{self.pool_size})")
            is_free[slot] = 1
        self._free.extend(reversed(slots))

    def check_invariants(self) -> None:
        """Raise AssertionError when the free list and the free flags disagree."""
        assert not self._is_free[0], "the dummy slot 0 is marked free"
        assert len(set(self._free)) == len(self._free), "a slot is in the free list twice"
        assert all(1 <= slot <= self.pool_size for slot in self._free), "a foreign slot is in the free list"
        assert all(self._is_free[slot] for slot in self._free), "a listed slot is not flagged free"
        assert sum(self._is_free) == len(self._free), "a flagged slot is missing from the free list"
