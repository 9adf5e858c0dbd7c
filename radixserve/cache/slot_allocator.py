"""Free list of KV slot ids ``1..pool_size``. Slot 0 is the reserved dummy target, never handed out.

Order is deterministic: a fresh allocator hands out 1, 2, 3, ...; freed slots are reused
last-freed first (a stack), which keeps recently touched pool rows warm.
"""

from __future__ import annotations

from collections.abc import Iterable


class SlotAllocator:
    def __init__(self, pool_size: int):
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.pool_size = pool_size
        self.reset()

    def reset(self) -> None:
        self._free = list(range(self.pool_size, 0, -1))  # stack: the end is handed out first
        self._is_free = bytearray(b"\x01") * (self.pool_size + 1)
        self._is_free[0] = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """Take ``n`` slots, or None (taking nothing) when fewer are free."""
        if n < 0:
            raise ValueError("cannot allocate a negative number of slots")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        taken.reverse()
        for slot in taken:
            self._is_free[slot] = 0
        return taken

    def free(self, slots: Iterable[int]) -> None:
        """Return slots. A double free or a slot outside ``1..pool_size`` raises ValueError."""
        slots = list(slots)
        for slot in slots:
            if not 1 <= slot <= self.pool_size:
                raise ValueError(f"slot {slot} is not in this pool (1..{self.pool_size})")
            if self._is_free[slot]:
                raise ValueError(f"slot {slot} freed twice")
            self._is_free[slot] = 1
        self._free.extend(reversed(slots))

    def check_invariants(self) -> None:
        assert len(set(self._free)) == len(self._free), "a slot is in the free list twice"
        assert sum(self._is_free) == len(self._free), "free flags disagree with the free list"
        assert all(self._is_free[slot] for slot in self._free), "a listed slot is not flagged free"
        assert not self._is_free[0], "the dummy slot 0 is marked free"
