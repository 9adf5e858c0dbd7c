"""A radix tree over token ids whose values are KV slot ids (pure Python).

Each edge holds a run of tokens and their KV slots. ``match_prefix`` walks the tree and splits a
node when the match ends inside it; ``insert`` adds what is new and reports how much was already
there. Nodes carry lock counts (a lock covers the path up to the root); unlocked leaves are
evicted least-recently-used first through a heap with lazy invalidation.

Accounting kept exactly (tokens, not nodes)::

    evictable_size = Σ len(node) over nodes with lock_ref == 0
    protected_size = Σ len(node) over nodes with lock_ref  > 0

An unlocked node never has a locked descendant (locks cover whole paths), so every evictable
token can in fact be evicted, leaves first.

``extra_key`` namespaces the tree: requests with different keys never share a node (the root's
children are keyed by ``(extra_key, first page)``). With ``page_size > 1`` only whole pages are
matched and inserted; a partial last page stays with the caller.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass


class TreeNode:
    __slots__ = ("key", "slots", "children", "parent", "lock_ref", "last_access", "namespace", "removed")

    def __init__(self, key: list[int], slots: list[int], parent: TreeNode | None, namespace=None):
        self.key = key
        self.slots = slots
        self.children: dict = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = 0
        self.namespace = namespace
        self.removed = False

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return f"TreeNode(key={self.key}, slots={self.slots}, lock_ref={self.lock_ref})"


@dataclass
class MatchResult:
    slots: list[int]  # KV slots of the matched prefix
    node: TreeNode  # deepest matched node (the root when nothing matched): lock this one


class RadixTree:
    def __init__(self, page_size: int = 1, disabled: bool = False):
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.page_size = page_size
        self.disabled = disabled
        self.reset()

    def reset(self) -> list[int]:
        """Drop every node; return the slots they held (the caller frees them). Nothing may be locked."""
        held = []
        if getattr(self, "root", None) is not None:
            assert self._protected == 0, "reset with locked nodes"
            held = [slot for node in self._nodes() for slot in node.slots]
        self.root = TreeNode([], [], None)
        self.root.lock_ref = 1  # the root is never evicted
        self._evictable = 0
        self._protected = 0
        self._heap: list = []
        self._clock = itertools.count(1)
        self._tiebreak = itertools.count()
        return held

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    # ---- lookup and insertion -----------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int], extra_key: str | None = None) -> MatchResult:
        """Longest cached prefix of ``token_ids`` (whole pages only). Touches the path for LRU."""
        if self.disabled:
            return MatchResult([], self.root)
        now = next(self._clock)
        node, pos, slots = self.root, 0, []
        limit = self._aligned(len(token_ids))
        while pos < limit:
            child = node.children.get(self._child_key(node, token_ids, pos, extra_key))
            if child is None:
                break
            n = self._aligned(_common_len(child.key, token_ids, pos, limit))
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            slots.extend(child.slots)
            node, pos = child, pos + n
        return MatchResult(slots, node)

    def insert(self, token_ids: Sequence[int], slots: Sequence[int], extra_key: str | None = None) -> int:
        """Insert whole pages of ``token_ids`` with their ``slots``.

        Returns how many leading tokens were already cached: the caller's slots for those are
        duplicates that the caller frees. Tokens past the last whole page are not inserted.
        """
        assert len(token_ids) == len(slots), "one slot per token"
        if self.disabled:
            return 0
        now = next(self._clock)
        limit = self._aligned(len(token_ids))
        node, pos = self.root, 0
        while pos < limit:
            child = node.children.get(self._child_key(node, token_ids, pos, extra_key))
            if child is None:
                self._add_leaf(node, list(token_ids[pos:limit]), list(slots[pos:limit]), extra_key, now)
                return pos
            n = self._aligned(_common_len(child.key, token_ids, pos, limit))
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, pos = child, pos + n
        return pos

    def _add_leaf(self, parent: TreeNode, key: list[int], slots: list[int], extra_key, now: int) -> None:
        leaf = TreeNode(key, slots, parent, extra_key if parent is self.root else parent.namespace)
        leaf.last_access = now
        parent.children[self._child_key(parent, key, 0, extra_key)] = leaf
        self._evictable += len(key)
        self._push(leaf)

    def _split(self, node: TreeNode, n: int) -> TreeNode:
        """Cut ``node`` after ``n`` tokens; return the new upper part (same locks, same LRU time)."""
        parent = node.parent
        upper = TreeNode(node.key[:n], node.slots[:n], parent, node.namespace)
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        parent.children[self._child_key(parent, node.key, 0, node.namespace)] = upper
        node.key, node.slots, node.parent = node.key[n:], node.slots[n:], upper
        upper.children[self._child_key(upper, node.key, 0, node.namespace)] = node
        return upper

    def _child_key(self, node: TreeNode, token_ids: Sequence[int], pos: int, extra_key):
        first = token_ids[pos] if self.page_size == 1 else tuple(token_ids[pos : pos + self.page_size])
        return (extra_key, first) if node is self.root else first

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    # ---- locks --------------------------------------------------------------------------------

    def lock(self, node: TreeNode) -> None:
        """Protect ``node`` and its ancestors from eviction (reference counted)."""
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, "unlock without lock"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
                if node.is_leaf:
                    self._push(node)
            node = node.parent

    # ---- eviction -----------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> list[int]:
        """Evict unlocked leaves, least recently used first, until ``num_tokens`` slots are freed
        or nothing is evictable. Returns the freed slots for the caller to give back."""
        freed: list[int] = []
        while len(freed) < num_tokens and self._heap:
            stamp, _, node = heapq.heappop(self._heap)
            if node.removed or node.lock_ref > 0 or not node.is_leaf:
                continue  # stale entry: the node changed since it was pushed
            if stamp != node.last_access:
                self._push(node)  # touched since: re-queue at its new time
                continue
            freed.extend(node.slots)
            self._remove_leaf(node)
        return freed

    def _remove_leaf(self, node: TreeNode) -> None:
        parent = node.parent
        del parent.children[self._child_key(parent, node.key, 0, node.namespace)]
        node.removed = True
        self._evictable -= len(node.key)
        if parent is not self.root and parent.is_leaf and parent.lock_ref == 0:
            self._push(parent)

    def _push(self, node: TreeNode) -> None:
        heapq.heappush(self._heap, (node.last_access, next(self._tiebreak), node))

    # ---- checks and debugging -----------------------------------------------------------------

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def check_invariants(self) -> None:
        evictable = protected = 0
        seen_slots: set[int] = set()
        for node in self._nodes():
            assert node.key and len(node.key) == len(node.slots), f"bad node {node}"
            assert len(node.key) % self.page_size == 0, "node not page aligned"
            assert node.lock_ref >= 0 and node.lock_ref <= node.parent.lock_ref or node.parent is self.root
            expected_key = self._child_key(node.parent, node.key, 0, node.namespace)
            assert node.parent.children.get(expected_key) is node, "child keyed wrongly"
            assert not seen_slots.intersection(node.slots), "a slot is held by two nodes"
            seen_slots.update(node.slots)
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        assert (evictable, protected) == (self._evictable, self._protected), (
            f"sizes drifted: walked ({evictable}, {protected}) kept ({self._evictable}, {self._protected})"
        )

    def pretty(self) -> str:
        lines = []

        def walk(node: TreeNode, depth: int) -> None:
            for child in node.children.values():
                lines.append(f"{'  ' * depth}{child.key} slots={child.slots} lock={child.lock_ref}")
                walk(child, depth + 1)

        walk(self.root, 0)
        return "\n".join(lines)


def _common_len(key: list[int], token_ids: Sequence[int], pos: int, limit: int) -> int:
    """Length of the common prefix of ``key`` and ``token_ids[pos:limit]``."""
    n = min(len(key), limit - pos)
    if list(token_ids[pos : pos + n]) == key[:n]:  # fast path in C: whole-edge matches are the norm
        return n
    i = 0
    while i < n and key[i] == token_ids[pos + i]:
        i += 1
    return i
