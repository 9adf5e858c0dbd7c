"""Randomised (hypothesis, stateful) test of the radix tree + slot allocator against a naive reference.

The reference is a plain dict from every cached token prefix to the KV slot of its last token.
Requests arrive (match, lock, allocate the rest), finish (insert, free duplicates, unlock) and
eviction runs under pressure. After every operation the accounting identity must hold:
``free + evictable + protected + held by live requests == pool_size``.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixserve.cache.radix_tree import RadixTree
from radixserve.cache.slot_allocator import SlotAllocator

POOL = 24
TOKENS = st.lists(st.integers(0, 3), min_size=1, max_size=12)
NAMESPACES = st.sampled_from([None, None, "tenant"])


class TreeMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tree = RadixTree()
        self.alloc = SlotAllocator(POOL)
        self.reference: dict[tuple, int] = {}  # (namespace, prefix tuple) -> slot of its last token
        self.live: list[dict] = []  # requests holding a lock and private slots

    def _reference_match(self, tokens, namespace) -> list[int]:
        slots = []
        for end in range(1, len(tokens) + 1):
            slot = self.reference.get((namespace, tuple(tokens[:end])))
            if slot is None:
                break
            slots.append(slot)
        return slots

    @rule(tokens=TOKENS, namespace=NAMESPACES)
    def arrive(self, tokens, namespace):
        match = self.tree.match_prefix(tokens, namespace)
        assert match.slots == self._reference_match(tokens, namespace)
        self.tree.lock(match.node)
        needed = len(tokens) - len(match.slots)
        if needed > self.alloc.num_free:
            self._evict(needed - self.alloc.num_free)
        slots = self.alloc.alloc(needed)
        if slots is None:
            self.tree.unlock(match.node)
            return
        self.live.append(
            {
                "tokens": tokens,
                "ns": namespace,
                "node": match.node,
                "tree_slots": len(match.slots),
                "slots": match.slots + slots,
            }
        )

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100), keep=st.booleans())
    def finish(self, index, keep):
        request = self.live.pop(index % len(self.live))
        tokens, slots, ns = request["tokens"], request["slots"], request["ns"]
        if keep:
            cached = self.tree.insert(tokens, slots, ns)
            self.alloc.free(slots[request["tree_slots"] : cached])
            for end in range(cached + 1, len(tokens) + 1):
                self.reference[(ns, tuple(tokens[:end]))] = slots[end - 1]
        else:
            self.alloc.free(slots[request["tree_slots"] :])
        self.tree.unlock(request["node"])

    @rule(amount=st.integers(1, POOL))
    def evict(self, amount):
        self._evict(amount)

    def _evict(self, amount):
        before = self.tree.evictable_size
        freed = self.tree.evict(amount)
        assert len(freed) >= min(amount, before) and len(freed) == before - self.tree.evictable_size
        freed_set = set(freed)
        locked = {s for r in self.live for s in r["slots"][: r["tree_slots"]]}
        assert not freed_set & locked, "evicted a slot of a locked prefix"
        self.reference = {k: v for k, v in self.reference.items() if v not in freed_set}
        self.alloc.free(freed)

    @invariant()
    def accounting_holds(self):
        held = sum(len(r["slots"]) - r["tree_slots"] for r in self.live)
        total = self.alloc.num_free + self.tree.evictable_size + self.tree.protected_size + held
        assert total == POOL
        assert self.tree.total_size() == len(self.reference)
        self.tree.check_invariants()
        self.alloc.check_invariants()

    def teardown(self):
        while self.live:
            self.finish(0, True)
        assert self.tree.protected_size == 0
        assert self.alloc.num_free + self.tree.evictable_size == POOL


TreeMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
test_tree_against_reference = TreeMachine.TestCase
