"""A radix tree over token ids whose values are KV slot ids (pure Python).

Each node holds a run of tokens (its ``key``) and their KV ``slots``. ``match_prefix`` walks the
tree and splits a node when the match ends inside it, so the returned node's path is exactly the
matched prefix; ``insert`` adds what is new and reports how much was already there. Locks are
reference counts that cover a node and its ancestors. Unlocked leaves are evicted least recently
used first.

Accounting, kept exactly by O(path) updates (tokens, not nodes; the root holds none)::

    evictable_size = Σ len(node.key) over nodes with lock_ref == 0
    protected_size = Σ len(node.key) over nodes with lock_ref  > 0

A lock covers the whole path, so an unlocked node has no locked descendant and every evictable
token can in fact be evicted, leaves first. Every touch stamps the whole path from the root, so a
parent is never older than its children and evicting leaves in LRU order is global LRU order.

LRU time is a counter bumped by every ``match_prefix`` and ``insert``, not wall time. Eviction
candidates sit in a heap keyed by ``(last_access, tiebreak)`` with lazy invalidation: an entry is
checked when popped (re-queued if its node was touched since, dropped if the node got locked or
children); each node has at most one entry, so the heap never outgrows the tree.

``extra_key`` namespaces the tree: the root's children are keyed by ``(extra_key, first token)``,
so requests with different keys (None is a key too) never share a node.

Pages: with ``page_size > 1`` children are keyed by their first page (a tuple) and only whole pages
are matched and inserted; ``num_insertable`` says how many tokens of a key that is.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


class TreeNode:
    __slots__ = ("key", "slots", "children", "parent", "lock_ref", "last_access", "namespace", "in_heap")

    def __init__(self, key: list[int], slots: list[int], parent: TreeNode | None, namespace: str | None = None):
        self.key = key  # the tokens on the edge from the parent
        self.slots = slots  # one KV slot per token of key
        self.children: dict = {}  # first token (or first page tuple); (extra_key, first) under the root
        self.parent = parent  # None for the root and for evicted nodes
        self.lock_ref = 0  # requests whose locked node is this one or a descendant
        self.last_access = 0
        self.namespace = namespace  # the extra_key of the subtree this node belongs to
        self.in_heap = False  # has an entry in the eviction heap

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return f"TreeNode(key={self.key}, slots={self.slots}, lock_ref={self.lock_ref})"


@dataclass
class MatchResult:
    slots: list[int]  # KV slots of the matched prefix (one per matched token)
    node: TreeNode  # deepest node of the match (the root when nothing matched): lock this one


@dataclass
class MatchHint:
    """One key's cached-prefix length as of one tree state (``match_len``), to resume from later."""

    length: int  # tokens matched, whole pages
    node: TreeNode  # the node where the match ends (the root when nothing matched)
    end: int  # how much of the key was looked at
    epoch: int  # the tree's count of leaves added then
    generation: int  # the tree's reset count then


class RadixTree:
    def __init__(self, page_size: int = 1, disabled: bool = False):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size
        self.disabled = disabled
        self._init_state()

    def _init_state(self) -> None:
        self.root = TreeNode([], [], None)
        self._evictable = 0
        self._protected = 0
        self._clock = 0
        self._epoch = 0  # leaves added: all that can lengthen a match (see match_len)
        self._generation = getattr(self, "_generation", -1) + 1  # resets: hints older than one are void
        self._heap: list[tuple[int, int, TreeNode]] = []  # (last_access when queued, tiebreak, leaf)
        self._tiebreak = itertools.count()

    def reset(self) -> list[int]:
        """Drop every node and return the slots they held, for the caller to free. Nothing may be locked."""
        assert self._protected == 0, "reset while nodes are locked"
        held = [slot for node in self._nodes() for slot in node.slots]
        self._init_state()
        return held

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    def num_insertable(self, num_tokens: int) -> int:
        """How many leading tokens of a ``num_tokens`` key the tree can hold: whole pages (0 when disabled)."""
        return 0 if self.disabled else num_tokens - num_tokens % self.page_size

    # ---- lookup and insertion -----------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int], extra_key: str | None = None) -> MatchResult:
        """The longest cached prefix of ``token_ids`` in whole pages, and the node where it ends.

        Splits a node when the match ends inside it and touches the matched path for LRU. A
        disabled tree matches nothing.
        """
        if self.disabled:
            return MatchResult([], self.root)
        slots: list[int] = []
        node, _ = self._walk(token_ids, self.num_insertable(len(token_ids)), extra_key, slots)
        return MatchResult(slots, node)

    def match_len(
        self,
        key_len: int,
        token_ids: Callable[[], Sequence[int]],
        extra_key: str | None = None,
        hint: MatchHint | None = None,
    ) -> MatchHint:
        """``match_prefix(key)`` for a key of ``key_len`` tokens without collecting its slots (it
        splits a node where the match ends inside it and touches the matched path for LRU all the
        same), as a hint.

        ``hint``, the previous answer for the same key (or the key before tokens were appended to
        it), is resumed from: nothing is walked when no leaf was added since and the key has the
        same length, only the part past the hint's node otherwise. (A match ends at its node, so
        only a leaf added can lengthen it; evicting that node shortens it, seen as the node's
        ``parent`` gone: the walk starts over. Nodes below it or elsewhere do not matter.)
        ``token_ids()`` gives the key; it is called only when a walk is needed (building a long key
        costs more than a valid hint).
        """
        end = self.num_insertable(key_len)
        stale = hint is None or hint.generation != self._generation
        if stale or (hint.node is not self.root and hint.node.parent is None):  # evicted since
            node, length = self.root, 0
        elif hint.epoch == self._epoch and hint.end == end:
            self._touch(hint.node)
            return hint
        else:
            node, length = hint.node, hint.length
        node, length = self._walk(token_ids(), end, extra_key, None, node, length)
        return MatchHint(length, node, end, self._epoch, self._generation)

    def touch(self, node: TreeNode) -> bool:
        """Mark ``node``'s path as used now (LRU); False (nothing done) if it was evicted."""
        if node is not self.root and node.parent is None:
            return False
        self._touch(node)
        return True

    def _touch(self, node: TreeNode) -> None:
        """Stamp ``node`` and its ancestors as used now (one tick of the LRU clock)."""
        self._clock += 1
        while node is not self.root:
            node.last_access = self._clock
            node = node.parent

    def insert(self, token_ids: Sequence[int], slots: Sequence[int], extra_key: str | None = None) -> int:
        """Cache ``token_ids`` with their ``slots`` (one per token); return ``num_cached``.

        ``num_cached`` counts the leading tokens the tree already held. With
        ``end = num_insertable(len(token_ids))``, the caller's slots split three ways::

            slots[:num_cached]      the tree keeps its own; the caller frees these, except the
                                    ones it got from match_prefix (they are the tree's)
            slots[num_cached:end]   now owned by the tree
            slots[end:]             a partial last page, not inserted: still the caller's

        A disabled tree inserts nothing and returns 0 (``end`` is 0: everything stays the caller's).
        The whole inserted path is touched for LRU.
        """
        if len(token_ids) != len(slots):
            raise ValueError(f"{len(token_ids)} tokens but {len(slots)} slots")
        if self.disabled:
            return 0
        end = self.num_insertable(len(token_ids))
        node, num_cached = self._walk(token_ids, end, extra_key, None)
        if num_cached < end:
            self._add_leaf(node, list(token_ids[num_cached:end]), list(slots[num_cached:end]), extra_key)
        return num_cached

    def _walk(
        self,
        token_ids: Sequence[int],
        end: int,
        extra_key: str | None,
        matched_slots: list[int] | None,
        node: TreeNode | None = None,
        pos: int = 0,
    ) -> tuple[TreeNode, int]:
        """Follow ``token_ids[pos:end]`` down the tree from ``node`` (the root, or a node ``pos``
        tokens deep on the key's path), splitting where it diverges inside a node and stamping every
        node passed, and ``node``'s own path. Returns the deepest node reached and the matched length."""
        node = self.root if node is None else node
        self._touch(node)
        now = self._clock
        while pos < end:
            child = node.children.get(self._child_key(node, token_ids, pos, extra_key))
            if child is None:
                break
            n = self._common_len(child.key, token_ids, pos, end)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            if matched_slots is not None:
                matched_slots.extend(child.slots)
            node, pos = child, pos + n
        return node, pos

    def _common_len(self, key: list[int], token_ids: Sequence[int], pos: int, end: int) -> int:
        """Whole pages of ``key`` that agree with ``token_ids[pos:end]`` (at least one: the child key matched)."""
        n = min(len(key), end - pos)
        if key[:n] == list(token_ids[pos : pos + n]):  # one comparison in C: a whole-edge match is the norm
            return n
        i = 0
        while key[i] == token_ids[pos + i]:
            i += 1
        return i - i % self.page_size

    def _add_leaf(self, parent: TreeNode, key: list[int], slots: list[int], extra_key: str | None) -> None:
        namespace = extra_key if parent is self.root else parent.namespace
        leaf = TreeNode(key, slots, parent, namespace)
        leaf.last_access = self._clock
        parent.children[self._child_key(parent, key, 0, namespace)] = leaf
        self._epoch += 1
        self._evictable += len(key)
        self._queue(leaf)

    def _split(self, node: TreeNode, n: int) -> TreeNode:
        """Cut ``node`` after ``n`` tokens; return the new upper part (same locks, same LRU time).

        The lower part keeps its identity (and heap entry), so a request holding it stays valid.
        """
        parent = node.parent
        upper = TreeNode(node.key[:n], node.slots[:n], parent, node.namespace)
        upper.lock_ref = node.lock_ref  # every lock through node now also passes through upper
        upper.last_access = node.last_access
        parent.children[self._child_key(parent, node.key, 0, node.namespace)] = upper
        node.key, node.slots, node.parent = node.key[n:], node.slots[n:], upper
        upper.children[self._child_key(upper, node.key, 0, node.namespace)] = node
        return upper

    def _child_key(self, parent: TreeNode, token_ids: Sequence[int], pos: int, extra_key: str | None):
        first = token_ids[pos] if self.page_size == 1 else tuple(token_ids[pos : pos + self.page_size])
        return (extra_key, first) if parent is self.root else first

    # ---- locks --------------------------------------------------------------------------------

    def lock(self, node: TreeNode) -> None:
        """Protect ``node`` and its ancestors from eviction (reference counted; the root is a no-op)."""
        if node.parent is None and node is not self.root:
            raise ValueError("cannot lock an evicted node")
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        """Undo one ``lock(node)``. A node whose count drops to 0 becomes evictable."""
        if node is not self.root and node.lock_ref == 0:
            raise ValueError("unlock of a node that is not locked")
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
                if not node.children:
                    self._queue(node)
            node = node.parent

    # ---- eviction -----------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> list[int]:
        """Evict unlocked leaves, least recently used first, until at least ``num_tokens`` slots are
        freed or nothing is evictable. Whole nodes go; a parent left as an unlocked leaf is next in
        line at its own access time. Returns the freed slots for the caller to give back."""
        freed: list[int] = []
        heap = self._heap
        while len(freed) < num_tokens and heap:
            queued_at, _, node = heapq.heappop(heap)
            node.in_heap = False
            if node.lock_ref or node.children:
                continue  # not a candidate now; queued again when it becomes an unlocked leaf
            if queued_at != node.last_access:
                self._queue(node)  # touched since it was queued: back in line at its real time
                continue
            freed.extend(node.slots)
            self._remove_leaf(node)
        return freed

    def _remove_leaf(self, node: TreeNode) -> None:
        parent = node.parent
        del parent.children[self._child_key(parent, node.key, 0, node.namespace)]
        node.parent = None
        self._evictable -= len(node.key)
        if parent is not self.root and not parent.children and parent.lock_ref == 0:
            self._queue(parent)

    def _queue(self, node: TreeNode) -> None:
        if not node.in_heap:
            node.in_heap = True
            heapq.heappush(self._heap, (node.last_access, next(self._tiebreak), node))

    # ---- checks and debugging -----------------------------------------------------------------

    def _nodes(self) -> Iterator[TreeNode]:
        """Every node but the root, parents before children."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def check_invariants(self) -> None:
        """Walk the whole tree and raise AssertionError if any kept quantity or structure is wrong."""
        evictable = protected = num_queued = 0
        seen_slots: set[int] = set()
        for node in self._nodes():
            self._check_node(node)
            assert seen_slots.isdisjoint(node.slots), f"a slot of {node} is held by another node"
            seen_slots.update(node.slots)
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            num_queued += node.in_heap
        assert (evictable, protected) == (self._evictable, self._protected), (
            f"sizes drifted: walked ({evictable}, {protected}), kept ({self._evictable}, {self._protected})"
        )
        assert num_queued == len(self._heap), "heap entries are not one per queued live node"
        for queued_at, _, node in self._heap:
            assert node.in_heap and queued_at <= node.last_access, f"bad heap entry for {node}"

    def _check_node(self, node: TreeNode) -> None:
        parent = node.parent
        assert parent is not None, f"{node} is in the tree but has no parent"
        assert node.key and len(node.key) == len(node.slots), f"empty node or slot count off: {node}"
        assert len(node.key) % self.page_size == 0, f"{node} is not page aligned"
        assert parent.children.get(self._child_key(parent, node.key, 0, node.namespace)) is node, (
            f"{node} is keyed wrongly under its parent"
        )
        assert node.lock_ref >= 0, f"negative lock count: {node}"
        assert node.last_access <= self._clock, f"{node} was touched in the future"
        if parent is not self.root:
            assert node.namespace == parent.namespace, f"{node} left its namespace"
            assert node.lock_ref <= parent.lock_ref, f"{node} is locked more than its parent"
            assert node.last_access <= parent.last_access, f"{node} is newer than its parent"
        if node.lock_ref == 0 and not node.children:
            assert node.in_heap, f"unlocked leaf {node} is not an eviction candidate"

    def pretty(self) -> str:
        """One line per node, indented by depth: key, slots, lock count, last access."""
        lines = []
        stack = [(child, 0) for child in reversed(self.root.children.values())]
        while stack:
            node, depth = stack.pop()
            namespace = f"[{node.namespace!r}] " if depth == 0 and node.namespace is not None else ""
            lines.append(
                f"{'  ' * depth}{namespace}{_clip(node.key)} slots={_clip(node.slots)} "
                f"lock={node.lock_ref} t={node.last_access}"
            )
            stack.extend((child, depth + 1) for child in reversed(node.children.values()))
        return "\n".join(lines)


def _clip(values: list[int], limit: int = 8) -> str:
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(map(str, values[:limit]))}, ... +{len(values) - limit}]"
