"""Glue between requests and the radix tree: match and lock, allocate with eviction, insert and release.

Accounting, at every moment::

    allocator.num_free + tree.evictable_size + tree.protected_size + Σ request private slots == pool_size

``PrefixCache`` is the only owner of that identity; the scheduler calls it for every slot it
hands out or takes back.
"""

from __future__ import annotations

from radixserve.cache.radix_tree import MatchHint, RadixTree
from radixserve.cache.slot_allocator import SlotAllocator
from radixserve.core.request import Request


class PrefixCache:
    def __init__(self, pool_size: int, disable_radix_cache: bool = False, page_size: int = 1):
        self.allocator = SlotAllocator(pool_size)
        self.tree = RadixTree(page_size=page_size, disabled=disable_radix_cache)
        self.num_private_slots = 0  # slots held by requests outside the tree
        # Counters for metrics: prompt tokens looked up and served from the cache.
        self.num_query_tokens = 0
        self.num_hit_tokens = 0

    @property
    def pool_size(self) -> int:
        return self.allocator.pool_size

    @property
    def num_available(self) -> int:
        """Slots obtainable right now: free plus evictable."""
        return self.allocator.num_free + self.tree.evictable_size

    def peek_match_len(self, request: Request) -> int:
        """Length of the cached prefix a fresh admission of ``request`` would get (capped at len - 1)."""
        return self.peek_match(request).length

    def peek_match(self, request: Request) -> MatchHint:
        """The cached prefix a fresh admission of ``request`` would get (at most len - 1 tokens),
        without taking it; resumed from the request's previous answer (``Request.prefix_hint``), so
        a long waiting queue is looked up every step at the cost of what changed in the tree."""
        key_len = len(request.prompt_ids) + len(request.output_ids) - 1

        def key() -> list[int]:  # only when the tree must be walked; read up to key_len only
            return request.ids_to_read

        request.prefix_hint = self.tree.match_len(key_len, key, request.extra_key, request.prefix_hint)
        return request.prefix_hint

    def touch_waiting(self, requests: list[Request]) -> None:
        """Mark the cached prefixes ``requests`` (waiting ones, first to be admitted first) need as
        used now, so that eviction under pressure takes prefixes nobody waits for first, and among
        the wanted ones those wanted last. Each request's hint node once; a request never looked
        up, or whose hint's node was evicted, is looked up (and so touched) now."""
        seen = set()
        for request in reversed(requests):  # the LRU clock ticks per touch: the queue's head last
            hint = request.prefix_hint
            if hint is not None and id(hint.node) in seen:
                continue
            if hint is None or not self.tree.touch(hint.node):
                hint = self.peek_match(request)  # walks from the root: touches its path
            seen.add(id(hint.node))

    def match_and_lock(self, request: Request) -> int:
        """Attach the cached prefix (at most ``num_tokens - 1``) to a request holding no slots."""
        assert not request.slots and request.cache_node is None
        ids = request.all_ids
        match = self.tree.match_prefix(ids[: len(ids) - 1], request.extra_key)
        self.tree.lock(match.node)
        request.cache_node = match.node
        request.slots = list(match.slots)
        request.num_tree_slots = len(match.slots)
        return len(match.slots)

    def allocate(self, num_slots: int) -> list[int] | None:
        """Take ``num_slots`` free slots, evicting unlocked LRU leaves when short. None if impossible."""
        shortage = num_slots - self.allocator.num_free
        if shortage > 0:
            if shortage > self.tree.evictable_size:
                return None
            self.allocator.free(self.tree.evict(shortage))
        slots = self.allocator.alloc(num_slots)
        if slots is not None:
            self.num_private_slots += num_slots
        return slots

    def extend(self, request: Request, slots: list[int]) -> None:
        """Record freshly allocated slots as the request's next positions."""
        request.slots.extend(slots)

    def extend_each(self, requests: list[Request], slots: list[int]) -> None:
        """Record one freshly allocated slot as each request's next position (a decode step)."""
        for request, slot in zip(requests, slots, strict=True):
            request.slots.append(slot)

    def truncate(self, request: Request, length: int) -> None:
        """Forget positions ``length:`` of a request (planned but never computed): free their slots."""
        assert length >= request.num_tree_slots, "cannot truncate into the locked prefix"
        dropped = request.slots[length:]
        if dropped:
            self.allocator.free(dropped)
            self.num_private_slots -= len(dropped)
            del request.slots[length:]
            request.slots_version += 1

    def cache_computed(self, request: Request) -> None:
        """Insert the request's computed tokens into the tree and re-lock it at the new end.

        The request's private slots that duplicate what the tree already held are freed and
        replaced by the tree's, so later requests and this one share one copy.
        """
        if self.tree.disabled:
            return
        ids = request.all_ids[: request.num_computed]
        num_cached = self.tree.insert(ids, request.slots, request.extra_key)
        duplicates = request.slots[request.num_tree_slots : num_cached]
        if duplicates:
            self.allocator.free(duplicates)
            request.slots_version += 1
        match = self.tree.match_prefix(ids, request.extra_key)
        self.tree.lock(match.node)
        self.tree.unlock(request.cache_node)
        self.num_private_slots -= len(request.slots) - request.num_tree_slots
        request.cache_node = match.node
        request.slots = list(match.slots) + request.slots[len(match.slots) :]
        request.num_tree_slots = len(match.slots)
        self.num_private_slots += len(request.slots) - request.num_tree_slots

    def release(self, request: Request, keep: bool = True) -> None:
        """Give back every slot of ``request``: computed tokens go into the tree when ``keep``."""
        if request.cache_node is None:
            assert not request.slots
            return
        if keep:
            self.cache_computed(request)
        private = request.slots[request.num_tree_slots :]
        if private:
            self.allocator.free(private)
            self.num_private_slots -= len(private)
        self.tree.unlock(request.cache_node)
        request.cache_node = None
        request.slots = []
        request.slots_version += 1
        request.num_tree_slots = 0

    def record_query(self, num_prompt_tokens: int, num_hit_tokens: int) -> None:
        self.num_query_tokens += num_prompt_tokens
        self.num_hit_tokens += num_hit_tokens

    def flush(self) -> bool:
        """Empty the tree. Refused (False) while any slot is locked or held by a request."""
        if self.tree.protected_size or self.num_private_slots:
            return False
        self.tree.reset()
        # Every slot is free now: restart from the fresh order 1, 2, 3, ... so later requests get
        # contiguous pool rows again (gathers over scattered slots are measurably slower on CPU).
        self.allocator.reset()
        return True

    def accounting(self) -> dict[str, int]:
        return {
            "pool_size": self.pool_size,
            "free": self.allocator.num_free,
            "evictable": self.tree.evictable_size,
            "protected": self.tree.protected_size + self.num_private_slots,
        }

    def check_invariants(self, num_private_slots_expected: int | None = None) -> None:
        self.allocator.check_invariants()
        self.tree.check_invariants()
        acct = self.accounting()
        total = acct["free"] + acct["evictable"] + acct["protected"]
        assert total == acct["pool_size"], f"KV accounting broken: {acct}"
        if num_private_slots_expected is not None:
            assert self.num_private_slots == num_private_slots_expected, (
                f"private slots {self.num_private_slots} != {num_private_slots_expected}"
            )
