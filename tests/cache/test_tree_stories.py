"""Radix tree and slot allocator stories: tiny pools, exact slot ids, exact eviction order."""

from __future__ import annotations

import pytest

from radixserve.cache.radix_tree import RadixTree
from radixserve.cache.slot_allocator import SlotAllocator


def test_allocator_hands_out_in_order_and_reuses_the_last_freed_batch_first():
    alloc = SlotAllocator(6)
    assert alloc.alloc(3) == [1, 2, 3]
    assert alloc.alloc(2) == [4, 5]
    alloc.free([2, 3])
    assert alloc.alloc(2) == [2, 3]
    assert alloc.alloc(2) is None and alloc.num_free == 1  # refused whole, nothing taken
    assert alloc.alloc(1) == [6]
    assert alloc.alloc(0) == []
    alloc.check_invariants()


def test_allocator_refuses_double_free_and_foreign_slots():
    alloc = SlotAllocator(4)
    slots = alloc.alloc(2)
    alloc.free(slots)
    with pytest.raises(ValueError, match="freed twice"):
        alloc.free([slots[0]])
    with pytest.raises(ValueError, match="not in this pool"):
        alloc.free([0])
    with pytest.raises(ValueError, match="not in this pool"):
        alloc.free([5])
    alloc.check_invariants()


def test_match_splits_a_node_when_it_ends_inside_it():
    tree = RadixTree()
    assert tree.insert([1, 2, 3, 4], [11, 12, 13, 14]) == 0
    match = tree.match_prefix([1, 2, 9])
    assert match.slots == [11, 12]
    assert match.node.key == [1, 2] and [c.key for c in match.node.children.values()] == [[3, 4]]
    assert tree.evictable_size == 4
    tree.check_invariants()


def test_insert_reports_what_was_already_cached():
    tree = RadixTree()
    assert tree.insert([1, 2, 3], [11, 12, 13]) == 0
    assert tree.insert([1, 2, 3, 4, 5], [21, 22, 23, 24, 25]) == 3  # the caller frees 21, 22, 23
    assert tree.match_prefix([1, 2, 3, 4, 5]).slots == [11, 12, 13, 24, 25]
    assert tree.insert([1, 2], [31, 32]) == 2
    assert tree.insert([1, 7], [41, 42]) == 1
    assert tree.total_size() == 6
    tree.check_invariants()


def test_lru_eviction_order_with_touches():
    tree = RadixTree()
    tree.insert([1, 1], [1, 2])  # A
    tree.insert([2, 2], [3, 4])  # B
    tree.insert([3, 3], [5, 6])  # C
    tree.match_prefix([1, 1])  # touch A: B is now the least recently used
    assert tree.evict(1) == [3, 4]  # a whole leaf goes
    assert tree.evict(2) == [5, 6]
    assert tree.evict(10) == [1, 2]
    assert tree.evict(1) == [] and tree.total_size() == 0
    tree.check_invariants()


def test_locked_paths_are_protected_and_unlock_makes_them_evictable():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3])
    tree.insert([1, 2, 4], [4, 5, 6])  # slots 4, 5 duplicate the cached [1, 2]; the tree keeps 1, 2
    node = tree.match_prefix([1, 2, 3]).node
    tree.lock(node)
    assert (tree.protected_size, tree.evictable_size) == (3, 1)
    assert tree.evict(10) == [6]  # only the unlocked leaf [4]
    tree.lock(node)
    tree.unlock(node)
    assert tree.protected_size == 3  # still locked once
    tree.unlock(node)
    assert (tree.protected_size, tree.evictable_size) == (0, 3)
    assert tree.evict(10) == [3, 1, 2]  # the leaf, then its parent once it became a leaf
    tree.check_invariants()


def test_parent_becomes_a_leaf_after_its_children_are_evicted():
    tree = RadixTree()
    tree.insert([5, 6, 7], [1, 2, 3])
    tree.insert([5, 6, 8], [4, 5, 9])
    tree.insert([9], [7])
    tree.match_prefix([9])  # [9] is the most recent; [5, 6] subtree is older
    assert tree.evict(1) == [3]
    assert tree.evict(1) == [9]
    assert tree.evict(1) == [1, 2]  # [5, 6] is now an unlocked leaf, older than [9]
    assert tree.evict(1) == [7]


def test_extra_key_namespaces_never_share_nodes():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3], extra_key="tenant-a")
    assert tree.match_prefix([1, 2, 3], extra_key="tenant-b").slots == []
    assert tree.match_prefix([1, 2, 3]).slots == []
    assert tree.insert([1, 2, 3], [4, 5, 6], extra_key="tenant-b") == 0
    assert tree.match_prefix([1, 2], extra_key="tenant-a").slots == [1, 2]
    assert tree.match_prefix([1, 2], extra_key="tenant-b").slots == [4, 5]
    tree.check_invariants()


def test_page_size_matches_and_inserts_whole_pages_only():
    tree = RadixTree(page_size=2)
    assert tree.insert([1, 2, 3, 4, 5], [11, 12, 13, 14, 15]) == 0
    assert tree.total_size() == 4  # the partial page [5] stays with the caller
    assert tree.match_prefix([1, 2, 3, 9]).slots == [11, 12]  # [3, 9] is not a cached page
    assert tree.match_prefix([1, 2, 3, 4, 5]).slots == [11, 12, 13, 14]
    assert tree.insert([1, 2, 7, 8], [21, 22, 23, 24]) == 2
    assert tree.match_prefix([1, 2, 7, 8]).slots == [11, 12, 23, 24]
    tree.check_invariants()
    wide = RadixTree(page_size=4)
    wide.insert([1, 2, 3, 4, 5, 6, 7, 8], list(range(1, 9)))
    assert wide.match_prefix([1, 2, 3, 4, 5, 6, 7, 0]).slots == [1, 2, 3, 4]
    wide.check_invariants()


def test_disabled_tree_caches_nothing():
    tree = RadixTree(disabled=True)
    assert tree.insert([1, 2], [1, 2]) == 0
    assert tree.match_prefix([1, 2]).slots == [] and tree.total_size() == 0


def test_reset_returns_every_held_slot():
    tree = RadixTree()
    tree.insert([1, 2], [3, 4])
    tree.insert([1, 5], [6, 7])
    assert sorted(tree.reset()) == [3, 4, 7]
    assert tree.total_size() == 0 and tree.match_prefix([1, 2]).slots == []
