"""The prefix cache: radix tree, KV slot allocator, and the request glue (pure Python)."""

from radixserve.cache.radix_tree import MatchResult, RadixTree, TreeNode
from radixserve.cache.slot_allocator import SlotAllocator

__all__ = ["MatchResult", "RadixTree", "SlotAllocator", "TreeNode"]
