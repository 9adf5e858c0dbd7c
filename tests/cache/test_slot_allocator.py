"""Slot allocator stories: tiny pools, exact slot ids."""

from __future__ import annotations

import pytest

from radixserve.cache import SlotAllocator


def test_a_fresh_pool_hands_out_one_two_three_and_never_slot_zero():
    allocator = SlotAllocator(5)
    assert allocator.pool_size == 5 and allocator.num_free == 5
    assert allocator.alloc(2) == [1, 2]
    assert allocator.alloc(3) == [3, 4, 5]
    assert allocator.num_free == 0
    assert allocator.alloc(1) is None
    assert allocator.alloc(0) == []
    allocator.check_invariants()


def test_the_last_freed_batch_is_handed_out_first_in_its_own_order():
    allocator = SlotAllocator(8)
    assert allocator.alloc(6) == [1, 2, 3, 4, 5, 6]
    allocator.free([5, 2])
    allocator.free([4])
    assert allocator.alloc(1) == [4]  # the latest batch is on top
    assert allocator.alloc(1) == [5]  # then the batch before it, first slot first
    allocator.free([6, 1, 3])
    assert allocator.alloc(4) == [6, 1, 3, 2]  # a batch that runs past the top one continues below it
    assert allocator.alloc(2) == [7, 8]  # never-used slots come last, in order
    allocator.check_invariants()


def test_a_refused_alloc_takes_nothing():
    allocator = SlotAllocator(3)
    assert allocator.alloc(2) == [1, 2]
    assert allocator.alloc(2) is None
    assert allocator.num_free == 1
    assert allocator.alloc(1) == [3]
    with pytest.raises(ValueError):
        allocator.alloc(-1)
    allocator.check_invariants()


def test_double_free_and_foreign_slots_are_refused_and_change_nothing():
    allocator = SlotAllocator(4)
    assert allocator.alloc(3) == [1, 2, 3]
    allocator.free([2])
    with pytest.raises(ValueError, match="slot 2 freed twice"):
        allocator.free([2])
    with pytest.raises(ValueError, match="slot 1 freed twice"):
        allocator.free([3, 1, 1])  # a repeat inside one call is a double free too
    for foreign in (0, 5, -1):
        with pytest.raises(ValueError, match="not in this pool"):
            allocator.free([1, foreign])
    allocator.check_invariants()
    assert allocator.num_free == 2  # slot 2 and the never-used slot 4; the refused calls freed nothing
    assert allocator.alloc(2) == [2, 4]
    allocator.free([3, 1])
    assert allocator.alloc(2) == [3, 1]


def test_reset_makes_the_pool_fresh():
    allocator = SlotAllocator(3)
    allocator.alloc(2)
    allocator.free([2])
    allocator.reset()
    assert allocator.num_free == 3
    assert allocator.alloc(3) == [1, 2, 3]
    allocator.check_invariants()


def test_check_invariants_catches_a_corrupted_free_list():
    allocator = SlotAllocator(3)
    allocator.alloc(1)
    allocator._free.append(1)  # simulate a bug: slot 1 is listed free while still handed out
    with pytest.raises(AssertionError):
        allocator.check_invariants()


def test_a_pool_needs_at_least_one_slot():
    with pytest.raises(ValueError):
        SlotAllocator(0)
