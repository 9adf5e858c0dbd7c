"""Radix tree stories: exact slot ids, exact node shapes, exact eviction order.

Comments ``# t3`` give the LRU clock: every match_prefix and insert is one tick.
"""

from __future__ import annotations

import pytest

from radixserve.cache import MatchResult, RadixTree, TreeNode


def path_of(node: TreeNode) -> list[int]:
    """The tokens from the root down to ``node``."""
    keys = []
    while node.parent is not None:
        keys.append(node.key)
        node = node.parent
    return [token for key in reversed(keys) for token in key]


def child_keys(node: TreeNode) -> list[list[int]]:
    return [child.key for child in node.children.values()]


# ---- matching and inserting -----------------------------------------------------------------------


def test_an_empty_tree_matches_nothing_and_returns_the_root():
    tree = RadixTree()
    match = tree.match_prefix([1, 2, 3])
    assert match == MatchResult(slots=[], node=tree.root)
    assert tree.total_size() == 0


def test_a_match_ending_inside_a_node_splits_it():
    tree = RadixTree()
    assert tree.insert([1, 2, 3, 4], [11, 12, 13, 14]) == 0
    match = tree.match_prefix([1, 2, 9])
    assert match.slots == [11, 12]
    assert match.node.key == [1, 2] and match.node.slots == [11, 12]
    assert match.node.parent is tree.root
    assert child_keys(match.node) == [[3, 4]]
    assert match.node.children[3].slots == [13, 14]
    assert (tree.evictable_size, tree.protected_size) == (4, 0)  # a split moves no tokens
    tree.check_invariants()


def test_the_matched_node_path_is_exactly_the_matched_prefix():
    tree = RadixTree()
    tree.insert([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6])
    tree.insert([1, 2, 3, 7], [7, 8, 9, 10])
    for prompt, matched in [([1, 2, 3, 4, 5], 5), ([1, 2, 3, 7, 7], 4), ([1, 2], 2), ([1, 2, 3], 3), ([2], 0)]:
        match = tree.match_prefix(prompt)
        assert path_of(match.node) == prompt[:matched]
        assert len(match.slots) == matched
    tree.check_invariants()


def test_insert_reports_how_many_leading_tokens_were_already_cached():
    tree = RadixTree()
    assert tree.insert([1, 2, 3], [11, 12, 13]) == 0
    assert tree.insert([1, 2, 3, 4, 5], [21, 22, 23, 24, 25]) == 3  # the caller frees 21, 22, 23
    assert tree.match_prefix([1, 2, 3, 4, 5]).slots == [11, 12, 13, 24, 25]
    assert tree.insert([1, 2], [31, 32]) == 2  # all cached: the tree adopts nothing
    assert tree.insert([1, 7], [41, 42]) == 1  # splits [1, 2, 3] after the 1; adopts 42
    assert tree.match_prefix([1, 7]).slots == [11, 42]
    assert tree.insert([], []) == 0
    assert tree.total_size() == 6
    tree.check_invariants()


def test_insert_needs_one_slot_per_token():
    with pytest.raises(ValueError, match="3 tokens but 2 slots"):
        RadixTree().insert([1, 2, 3], [1, 2])


# ---- LRU eviction ---------------------------------------------------------------------------------


def test_eviction_takes_whole_leaves_least_recently_used_first():
    tree = RadixTree()
    tree.insert([1, 1], [1, 2])  # t1: A
    tree.insert([2, 2], [3, 4])  # t2: B
    tree.insert([3, 3], [5, 6])  # t3: C
    tree.match_prefix([1, 1, 5])  # t4: touches A, so B is the least recently used
    assert tree.evict(1) == [3, 4]  # a whole node goes even when one slot was asked for
    assert tree.evictable_size == 4
    assert tree.evict(3) == [5, 6, 1, 2]  # C, and A as C alone was not enough
    assert tree.evict(1) == []
    assert tree.total_size() == 0
    tree.check_invariants()


def test_insert_touches_the_path_too():
    tree = RadixTree()
    tree.insert([1, 1], [1, 2])  # t1: A
    tree.insert([2, 2], [3, 4])  # t2: B
    assert tree.insert([1, 1], [7, 8]) == 2  # t3: already cached, but A is now the most recent
    assert tree.evict(1) == [3, 4]
    assert tree.evict(0) == []


def test_a_parent_left_without_children_is_evicted_at_its_own_access_time():
    tree = RadixTree()
    tree.insert([5, 6, 7], [1, 2, 3])  # t1
    tree.insert([5, 6, 8], [4, 5, 6])  # t2: [5, 6] -> {[7], [8]}; the caller frees its duplicates 4, 5
    tree.insert([9], [7])  # t3
    assert tree.evict(1) == [3]  # [7] at t1
    assert tree.evict(1) == [6]  # [8] at t2; [5, 6] is left a leaf, last touched at t2
    assert tree.evict(1) == [1, 2]  # [5, 6] is older than [9]
    assert tree.evict(1) == [7]
    tree.check_invariants()


def test_a_parent_touched_later_outlives_an_older_leaf():
    tree = RadixTree()
    tree.insert([5, 6, 7], [1, 2, 3])  # t1
    tree.insert([5, 6, 8], [4, 5, 6])  # t2
    tree.insert([9], [7])  # t3
    tree.match_prefix([5, 6])  # t4: only the parent [5, 6]
    assert tree.evict(2) == [3, 6]  # both children, then the count is reached
    assert tree.evict(1) == [7]  # [9] at t3 before [5, 6] at t4
    assert tree.evict(1) == [1, 2]
    tree.check_invariants()


# ---- locks ----------------------------------------------------------------------------------------


def test_a_lock_protects_the_whole_path_and_unlock_makes_it_evictable_again():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3])
    assert tree.insert([1, 2, 4], [4, 5, 6]) == 2  # the tree keeps 1, 2; the caller frees 4, 5
    node = tree.match_prefix([1, 2, 3]).node
    tree.lock(node)
    assert (tree.protected_size, tree.evictable_size) == (3, 1)
    assert tree.evict(10) == [6]  # only the unlocked leaf [4]
    assert (tree.protected_size, tree.evictable_size) == (3, 0)
    tree.lock(node)  # a second request on the same prefix
    tree.unlock(node)
    assert (tree.protected_size, tree.evictable_size) == (3, 0)  # still held once
    tree.unlock(node)
    assert (tree.protected_size, tree.evictable_size) == (0, 3)
    assert tree.evict(1) == [3]
    assert tree.evict(1) == [1, 2]  # the parent, once it became an unlocked leaf
    tree.check_invariants()


def test_locking_a_parent_leaves_its_children_evictable():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3])
    tree.insert([1, 2, 4], [4, 5, 6])
    parent = tree.match_prefix([1, 2]).node
    tree.lock(parent)
    assert (tree.protected_size, tree.evictable_size) == (2, 2)
    assert tree.evict(10) == [3, 6]
    assert tree.total_size() == 2
    tree.unlock(parent)
    assert tree.evict(10) == [1, 2]


def test_splitting_a_locked_node_keeps_the_lock_on_both_halves():
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], [1, 2, 3, 4])
    held = tree.match_prefix([1, 2, 3, 4]).node
    tree.lock(held)
    upper = tree.match_prefix([1, 2, 7]).node  # splits the locked node
    assert upper.key == [1, 2] and upper.lock_ref == 1 and held.key == [3, 4] and held.parent is upper
    assert tree.insert([1, 2, 7], [5, 6, 7]) == 2
    assert (tree.protected_size, tree.evictable_size) == (4, 1)
    assert tree.evict(10) == [7]
    tree.unlock(held)  # the request still holds the lower half, and that unlocks both
    assert (tree.protected_size, tree.evictable_size) == (0, 4)
    assert tree.evict(10) == [3, 4, 1, 2]
    tree.check_invariants()


def test_locking_the_root_is_a_no_op():
    tree = RadixTree()
    tree.insert([1], [1])
    root = tree.match_prefix([9]).node
    assert root is tree.root
    tree.lock(root)
    tree.unlock(root)
    assert (tree.protected_size, tree.evictable_size) == (0, 1)


def test_misuse_of_locks_is_refused():
    tree = RadixTree()
    tree.insert([1, 2], [1, 2])
    node = tree.match_prefix([1, 2]).node
    with pytest.raises(ValueError, match="not locked"):
        tree.unlock(node)
    assert tree.evict(1) == [1, 2]
    with pytest.raises(ValueError, match="evicted"):
        tree.lock(node)
    tree.check_invariants()


def test_lock_cycles_do_not_grow_the_eviction_heap():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3])
    node = tree.match_prefix([1, 2, 3]).node
    for _ in range(1000):
        tree.lock(node)
        tree.unlock(node)
        tree.match_prefix([1, 2, 3])
    assert len(tree._heap) == 1  # one entry per node at most (private, but this is the point)
    tree.check_invariants()
    assert tree.evict(1) == [1, 2, 3]


# ---- namespaces, pages, disabled ------------------------------------------------------------------


def test_requests_with_different_extra_keys_never_share_nodes():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3], extra_key="lora-a")
    assert tree.match_prefix([1, 2, 3], extra_key="lora-b").slots == []
    assert tree.match_prefix([1, 2, 3]).slots == []  # None is a namespace of its own
    assert tree.insert([1, 2, 3], [4, 5, 6], extra_key="lora-b") == 0
    assert tree.insert([1, 2], [7, 8]) == 0
    assert tree.match_prefix([1, 2], extra_key="lora-a").slots == [1, 2]
    assert tree.match_prefix([1, 2], extra_key="lora-b").slots == [4, 5]
    assert tree.match_prefix([1, 2, 3]).slots == [7, 8]
    assert len(tree.root.children) == 3
    assert {child.namespace for child in tree.root.children.values()} == {"lora-a", "lora-b", None}
    tree.check_invariants()


def test_page_size_two_matches_and_inserts_whole_pages_only():
    tree = RadixTree(page_size=2)
    assert tree.num_insertable(5) == 4
    assert tree.insert([1, 2, 3, 4, 5], [11, 12, 13, 14, 15]) == 0
    assert tree.total_size() == 4  # slot 15 holds a partial page: it stays with the caller
    assert tree.match_prefix([1, 2, 3, 4, 5]).slots == [11, 12, 13, 14]
    assert tree.match_prefix([1]).slots == []  # less than a page
    match = tree.match_prefix([1, 2, 3])  # the match stops at the page boundary and splits there
    assert match.slots == [11, 12] and match.node.key == [1, 2] and child_keys(match.node) == [[3, 4]]
    assert tree.match_prefix([1, 2, 3, 9]).slots == [11, 12]  # [3, 9] is not a cached page
    assert tree.insert([1, 2, 3, 7, 8, 9, 5], [21, 22, 23, 24, 25, 26, 27]) == 2
    assert child_keys(match.node) == [[3, 4], [3, 7, 8, 9]]  # children keyed by their first page
    assert tree.match_prefix([1, 2, 3, 7, 8, 9, 5]).slots == [11, 12, 23, 24, 25, 26]
    assert tree.evict(1) == [13, 14]  # [3, 4] is the least recently used page
    tree.check_invariants()


def test_page_size_four_splits_only_on_page_boundaries():
    tree = RadixTree(page_size=4)
    tree.insert(list(range(1, 10)), list(range(1, 10)))
    assert tree.total_size() == 8
    assert tree.match_prefix([1, 2, 3, 4, 5, 6, 7, 0]).slots == [1, 2, 3, 4]
    assert tree.match_prefix([1, 2, 3, 0]).slots == []
    assert child_keys(tree.root) == [[1, 2, 3, 4]]
    assert tree.insert([1, 2, 3, 4, 5, 6, 0, 0], [0] * 8) == 4
    assert tree.total_size() == 12
    tree.check_invariants()


def test_a_disabled_tree_caches_nothing():
    tree = RadixTree(disabled=True)
    assert tree.num_insertable(5) == 0
    assert tree.insert([1, 2], [1, 2]) == 0  # the caller frees both
    assert tree.match_prefix([1, 2]) == MatchResult([], tree.root)
    assert tree.total_size() == 0 and tree.evict(5) == []
    tree.check_invariants()


# ---- reset, checks, debug dump --------------------------------------------------------------------


def test_reset_returns_every_held_slot_and_starts_over():
    tree = RadixTree()
    tree.insert([1, 2], [3, 4])
    tree.insert([1, 5], [6, 7])
    assert sorted(tree.reset()) == [3, 4, 7]
    assert tree.total_size() == 0 and tree.match_prefix([1, 2]).slots == []
    assert tree.insert([1, 2], [8, 9]) == 0
    tree.check_invariants()


def test_reset_while_locked_is_a_bug():
    tree = RadixTree()
    tree.insert([1], [1])
    tree.lock(tree.match_prefix([1]).node)
    with pytest.raises(AssertionError):
        tree.reset()


def test_check_invariants_catches_drifted_sizes_and_bad_structure():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3])
    tree._evictable += 1
    with pytest.raises(AssertionError, match="sizes drifted"):
        tree.check_invariants()
    tree._evictable -= 1
    tree.check_invariants()
    tree.root.children[(None, 1)].key = []
    with pytest.raises(AssertionError):
        tree.check_invariants()


def test_pretty_shows_one_line_per_node():
    tree = RadixTree()
    tree.insert([1, 2, 3], [1, 2, 3])  # t1
    tree.insert([1, 2, 4], [4, 5, 6])  # t2
    tree.insert(list(range(20)), list(range(100, 120)), extra_key="a")  # t3
    tree.lock(tree.match_prefix([1, 2]).node)  # t4
    assert tree.pretty() == "\n".join(
        [
            "[1, 2] slots=[1, 2] lock=1 t=4",
            "  [3] slots=[3] lock=0 t=1",
            "  [4] slots=[6] lock=0 t=2",
            "['a'] [0, 1, 2, 3, 4, 5, 6, 7, ... +12] slots=[100, 101, 102, 103, 104, 105, 106, 107, ... +12] lock=0 t=3",
        ]
    )
