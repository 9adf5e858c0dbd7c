"""Thousands of random cache operations, checked against a naive reference after every one.

The model plays the scheduler's part on a tiny pool: requests arrive (match, lock, allocate the
rest, evicting when short), decode (allocate more), checkpoint (insert what they computed, free
duplicates, re-lock at the new end) and finish (checkpoint or abort, free what is private, unlock).
Tokens come from a vocabulary of four with lengths up to twelve, so prefixes are shared constantly.

The reference knows nothing of nodes: it maps every cached prefix ``(extra_key, tokens)`` to the
slot of its last token, its last access and its lock count, and evicts one token at a time (the
least recently used unlocked leaf). Matches must agree slot for slot, and every eviction must free
exactly the slots the reference evicts first. After every operation::

    allocator.num_free + tree.evictable_size + tree.protected_size + Σ request private slots == POOL

and every slot has exactly one owner: the free list, the tree, or one request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixserve.cache import RadixTree, SlotAllocator, TreeNode

POOL = 24
VOCAB = 4
MAX_LEN = 12
NAMESPACES = [None, None, "lora"]


class ReferenceCache:
    """Page-by-page model of the cache: ``(namespace, prefix) -> [page slots, last_access, lock_count]``.

    Every prefix that ends on a page boundary has its own entry holding the slots of its last page.
    """

    def __init__(self, page_size: int):
        self.page_size = page_size
        self.entries: dict[tuple, list] = {}
        self.clock = 0

    def _keys(self, tokens: list[int], namespace) -> list[tuple]:
        ends = range(self.page_size, len(tokens) + 1, self.page_size)
        return [(namespace, tuple(tokens[:end])) for end in ends]

    def match(self, tokens: list[int], namespace) -> list[int]:
        self.clock += 1
        slots = []
        for key in self._keys(tokens, namespace):
            entry = self.entries.get(key)
            if entry is None:
                break
            entry[1] = self.clock
            slots.extend(entry[0])
        return slots

    def insert(self, tokens: list[int], slots: list[int], namespace) -> int:
        """Cache the whole pages of ``tokens``; return how many leading tokens were already cached."""
        self.clock += 1
        keys = self._keys(tokens, namespace)
        num_cached = self.page_size * sum(key in self.entries for key in keys)  # entries are prefix closed
        for key in keys:
            end = len(key[1])
            self.entries.setdefault(key, [slots[end - self.page_size : end], 0, 0])[1] = self.clock
        return num_cached

    def lock(self, tokens: list[int], namespace, delta: int) -> None:
        for key in self._keys(tokens, namespace):
            self.entries[key][2] += delta

    @property
    def num_tokens(self) -> int:
        return self.page_size * len(self.entries)

    @property
    def num_locked_tokens(self) -> int:
        return self.page_size * sum(1 for entry in self.entries.values() if entry[2])

    def evict(self, num_tokens: int) -> set[int]:
        """Evict ``num_tokens`` tokens, one least recently used unlocked leaf page at a time."""
        assert num_tokens % self.page_size == 0, "the tree evicted a partial page"
        freed: set[int] = set()
        for _ in range(num_tokens // self.page_size):
            parents = {(namespace, prefix[: -self.page_size]) for namespace, prefix in self.entries}
            leaves = sorted(
                (entry[1], key) for key, entry in self.entries.items() if not entry[2] and key not in parents
            )
            assert leaves, "the tree evicted more than the reference can"
            assert len(leaves) == 1 or leaves[0][0] < leaves[1][0], "two leaves share an access time"
            freed.update(self.entries.pop(leaves[0][1])[0])
        return freed


@dataclass
class LiveRequest:
    tokens: list[int]
    namespace: str | None
    node: TreeNode  # the locked node: its path is tokens[:num_tree_slots]
    slots: list[int]  # one per token; the first num_tree_slots belong to the tree
    num_tree_slots: int

    @property
    def private_slots(self) -> list[int]:
        return self.slots[self.num_tree_slots :]


class CacheModel:
    """A scheduler in miniature over one tree and one allocator, mirrored into the reference."""

    def __init__(self, page_size: int):
        self.tree = RadixTree(page_size=page_size)
        self.allocator = SlotAllocator(POOL)
        self.reference = ReferenceCache(page_size)
        self.requests: list[LiveRequest] = []
        # waiting requests looked up step after step through their last hint: [tokens, namespace, hint]
        self.waiters: list[list] = []

    # ---- operations ---------------------------------------------------------------------------

    def peek(self, tokens: list[int], namespace) -> None:
        assert self.tree.match_prefix(tokens, namespace).slots == self.reference.match(tokens, namespace)

    def wait(self, tokens: list[int], namespace) -> None:
        self.waiters.append([list(tokens), namespace, None])
        self.look_up_waiter(len(self.waiters) - 1, [])

    def look_up_waiter(self, index: int, new_tokens: list[int]) -> None:
        """A waiting request's match resumed from its hint (after tokens were appended to it, as a
        retracted request's outputs are) equals a fresh match, and its node spells the match."""
        waiter = self.waiters[index % len(self.waiters)]
        tokens, namespace, hint = waiter
        tokens += new_tokens
        hint = self.tree.match_len(len(tokens), lambda: tokens, namespace, hint)
        assert hint.length == len(self.reference.match(tokens, namespace))
        spelled, node = [], hint.node
        while node is not self.tree.root:
            assert node.parent is not None, "the hint's node was evicted"
            spelled[:0] = node.key
            node = node.parent
        assert spelled == tokens[: hint.length]
        waiter[2] = hint

    def arrive(self, tokens: list[int], namespace) -> None:
        match = self._match_and_lock(tokens, namespace)
        slots = self._allocate(len(tokens) - len(match.slots))
        if slots is None:  # no room even after eviction: the request waits (here: goes away)
            self._unlock(match.node, tokens[: len(match.slots)], namespace)
            return
        self.requests.append(LiveRequest(tokens, namespace, match.node, match.slots + slots, len(match.slots)))

    def decode(self, index: int, new_tokens: list[int]) -> None:
        request = self.requests[index % len(self.requests)]
        slots = self._allocate(len(new_tokens))
        if slots is not None:
            request.tokens = request.tokens + new_tokens
            request.slots = request.slots + slots

    def checkpoint(self, index: int) -> None:
        """Insert what the request computed and move its lock to the new end (prefix_cache's job)."""
        request = self.requests[index % len(self.requests)]
        tokens, namespace, old_slots = request.tokens, request.namespace, request.slots
        num_cached = self.tree.insert(tokens, old_slots, namespace)
        assert num_cached == self.reference.insert(tokens, old_slots, namespace)
        assert num_cached >= request.num_tree_slots, "the locked prefix went missing"
        self.allocator.free(old_slots[request.num_tree_slots : num_cached])  # duplicates of the tree's
        match = self._match_and_lock(tokens, namespace)
        end = self.tree.num_insertable(len(tokens))
        assert len(match.slots) == end and match.slots[num_cached:] == old_slots[num_cached:end]
        self._unlock(request.node, tokens[: request.num_tree_slots], namespace)
        request.node, request.num_tree_slots = match.node, end
        request.slots = match.slots + old_slots[end:]  # the partial last page stays private

    def finish(self, index: int, keep: bool) -> None:
        if keep:
            self.checkpoint(index)
        request = self.requests.pop(index % len(self.requests))
        self.allocator.free(request.private_slots)
        self._unlock(request.node, request.tokens[: request.num_tree_slots], request.namespace)

    def evict(self, num_tokens: int) -> None:
        before = self.tree.evictable_size
        freed = self.tree.evict(num_tokens)
        assert len(freed) >= min(num_tokens, before) and len(freed) == before - self.tree.evictable_size
        assert len(set(freed)) == len(freed)
        assert set(freed) == self.reference.evict(len(freed)), "evicted other slots than LRU order says"
        assert self._tree_slots().isdisjoint(freed), "an evicted slot is still in the tree"
        self.allocator.free(freed)

    def reset(self) -> None:
        assert not self.requests
        self.allocator.free(self.tree.reset())
        self.reference.entries.clear()

    def drain(self) -> None:
        """Finish everything, then evict everything: the pool must be whole again."""
        while self.requests:
            self.finish(0, keep=True)
            self.check()
        assert self.tree.protected_size == 0
        self.evict(POOL)
        self.check()
        assert self.allocator.num_free == POOL and self.tree.total_size() == 0

    # ---- helpers ------------------------------------------------------------------------------

    def _match_and_lock(self, tokens: list[int], namespace):
        match = self.tree.match_prefix(tokens, namespace)
        assert match.slots == self.reference.match(tokens, namespace)
        self.tree.lock(match.node)
        self.reference.lock(tokens[: len(match.slots)], namespace, +1)
        return match

    def _unlock(self, node: TreeNode, prefix: list[int], namespace) -> None:
        self.tree.unlock(node)
        self.reference.lock(prefix, namespace, -1)

    def _allocate(self, num_slots: int) -> list[int] | None:
        shortage = num_slots - self.allocator.num_free
        if shortage > self.tree.evictable_size:
            return None
        if shortage > 0:
            self.evict(shortage)
        slots = self.allocator.alloc(num_slots)
        assert slots is not None, "eviction freed less than it promised"
        return slots

    def _tree_slots(self) -> set[int]:
        slots: set[int] = set()
        stack = [self.tree.root]
        while stack:
            node = stack.pop()
            slots.update(node.slots)
            stack.extend(node.children.values())
        return slots

    # ---- the checks after every operation -----------------------------------------------------

    def check(self) -> None:
        tree, allocator = self.tree, self.allocator
        tree.check_invariants()
        allocator.check_invariants()
        num_private = sum(len(request.private_slots) for request in self.requests)
        assert allocator.num_free + tree.evictable_size + tree.protected_size + num_private == POOL
        assert tree.total_size() == self.reference.num_tokens
        assert tree.protected_size == self.reference.num_locked_tokens
        owned = [slot for request in self.requests for slot in request.private_slots]
        tree_slots = self._tree_slots()
        assert len(set(owned)) == len(owned) and tree_slots.isdisjoint(owned), "a slot has two owners"
        assert len(tree_slots) + len(owned) == POOL - allocator.num_free, "a slot has no owner"
        for request in self.requests:
            self._check_request(request, tree_slots)

    def _check_request(self, request: LiveRequest, tree_slots: set[int]) -> None:
        """The locked node still spells out the request's cached prefix, with its slots."""
        assert len(request.slots) == len(request.tokens)
        keys, slots, node = [], [], request.node
        while node is not self.tree.root:
            assert node.lock_ref > 0 and node.parent is not None
            keys.append(node.key)
            slots.append(node.slots)
            node = node.parent
        assert [t for key in reversed(keys) for t in key] == request.tokens[: request.num_tree_slots]
        assert [s for part in reversed(slots) for s in part] == request.slots[: request.num_tree_slots]
        assert tree_slots.issuperset(request.slots[: request.num_tree_slots])


# ---- driver 1: a seeded random walk (fixed, so a failure replays exactly) ---------------------------


def random_tokens(rng: random.Random, max_len: int = MAX_LEN) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(rng.randint(0, max_len))]


def random_step(model: CacheModel, rng: random.Random) -> None:
    op = rng.choices(
        ["arrive", "decode", "checkpoint", "finish", "peek", "wait", "evict", "reset"], [6, 4, 2, 5, 2, 3, 2, 0.2]
    )[0]
    if op in ("decode", "checkpoint", "finish") and not model.requests:
        op = "arrive"
    if op == "reset" and model.requests:
        op = "peek"
    if op == "arrive":
        model.arrive(random_tokens(rng), rng.choice(NAMESPACES))
    elif op == "decode":
        model.decode(rng.randrange(100), random_tokens(rng, 3))
    elif op == "checkpoint":
        model.checkpoint(rng.randrange(100))
    elif op == "finish":
        model.finish(rng.randrange(100), keep=rng.random() < 0.8)
    elif op == "peek":
        model.peek(random_tokens(rng), rng.choice(NAMESPACES))
    elif op == "wait":
        if len(model.waiters) < 6 or rng.random() < 0.1:
            model.wait(random_tokens(rng), rng.choice(NAMESPACES))
        else:  # every waiter looked up again, one of them with tokens appended
            grown = rng.randrange(len(model.waiters))
            for index in range(len(model.waiters)):
                model.look_up_waiter(index, random_tokens(rng, 2) if index == grown else [])
    elif op == "evict":
        model.evict(rng.randint(1, POOL // 2))
    else:
        model.reset()


@pytest.mark.parametrize("page_size", [1, 2, 4])
def test_seeded_random_operations_agree_with_the_reference(page_size):
    rng = random.Random(1000 + page_size)
    model = CacheModel(page_size)
    for _ in range(2500):
        random_step(model, rng)
        model.check()
    model.drain()


# ---- driver 2: hypothesis, which also shrinks a failure to a short story -----------------------------

TOKENS = st.lists(st.integers(0, VOCAB - 1), max_size=MAX_LEN)
NAMESPACE = st.sampled_from(NAMESPACES)
INDEX = st.integers(0, 100)


class CacheMachine(RuleBasedStateMachine):
    @initialize(page_size=st.sampled_from([1, 2, 4]))
    def start(self, page_size):
        self.model = CacheModel(page_size)

    @rule(tokens=TOKENS, namespace=NAMESPACE)
    def arrive(self, tokens, namespace):
        self.model.arrive(tokens, namespace)

    @rule(tokens=TOKENS, namespace=NAMESPACE)
    def peek(self, tokens, namespace):
        self.model.peek(tokens, namespace)

    @rule(tokens=TOKENS, namespace=NAMESPACE)
    def wait(self, tokens, namespace):
        self.model.wait(tokens, namespace)

    @precondition(lambda self: self.model.waiters)
    @rule(index=INDEX, new_tokens=st.lists(st.integers(0, VOCAB - 1), max_size=2))
    def look_up_waiter(self, index, new_tokens):
        self.model.look_up_waiter(index, new_tokens)

    @precondition(lambda self: self.model.requests)
    @rule(index=INDEX, new_tokens=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=3))
    def decode(self, index, new_tokens):
        self.model.decode(index, new_tokens)

    @precondition(lambda self: self.model.requests)
    @rule(index=INDEX)
    def checkpoint(self, index):
        self.model.checkpoint(index)

    @precondition(lambda self: self.model.requests)
    @rule(index=INDEX, keep=st.booleans())
    def finish(self, index, keep):
        self.model.finish(index, keep)

    @rule(num_tokens=st.integers(1, POOL))
    def evict(self, num_tokens):
        self.model.evict(num_tokens)

    @precondition(lambda self: not self.model.requests)
    @rule()
    def reset(self):
        self.model.reset()

    @invariant()
    def consistent(self):
        self.model.check()

    def teardown(self):
        if hasattr(self, "model"):
            self.model.drain()


CacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
test_hypothesis_operations_agree_with_the_reference = CacheMachine.TestCase
