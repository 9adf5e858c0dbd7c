"""A throwaway compressed trie over token sequences, to see which waiting requests share a prefix.

Built afresh at each ordering, so it must be cheap for a thousand 2,000-token prompts: an edge is
compared with one list comparison in C, and where a sequence leaves an edge midway the point is
found by bisection, never by a Python loop over tokens. It holds no KV and knows nothing of locks
or eviction (that is ``cache.radix_tree``); a node is only its edge, its parent and its children.
"""

from __future__ import annotations


class TrieNode:
    __slots__ = ("key", "parent", "children")

    def __init__(self, key: list[int], parent: TrieNode | None):
        self.key = key  # the tokens on the edge from the parent
        self.parent = parent  # None for the root
        self.children: dict[int, TrieNode] = {}  # by first token


class TokenTrie:
    def __init__(self) -> None:
        self.root = TrieNode([], None)

    def insert(self, token_ids: list[int]) -> TrieNode:
        """Add ``token_ids``; return the node whose path is exactly them (the root for none).

        A node returned earlier stays the node of its sequence: a split keeps the lower half's identity."""
        node, pos = self.root, 0
        while pos < len(token_ids):
            child = node.children.get(token_ids[pos])
            if child is None:
                leaf = TrieNode(token_ids[pos:], node)
                node.children[token_ids[pos]] = leaf
                return leaf
            n = _common_len(child.key, token_ids, pos)
            if n < len(child.key):
                child = _split(child, n)
            node, pos = child, pos + n
        return node


def _common_len(edge: list[int], token_ids: list[int], pos: int) -> int:
    """Leading tokens of ``edge`` that agree with ``token_ids[pos:]`` (at least one: the child key matched)."""
    n = min(len(edge), len(token_ids) - pos)
    if (edge if n == len(edge) else edge[:n]) == token_ids[pos : pos + n]:  # the usual case: one slice
        return n
    agree, differ = 1, n  # edge[:agree] matches, edge[:differ] does not
    while differ - agree > 1:
        mid = (agree + differ) // 2
        if edge[agree:mid] == token_ids[pos + agree : pos + mid]:
            agree = mid
        else:
            differ = mid
    return agree


def _split(node: TrieNode, n: int) -> TrieNode:
    """Cut ``node``'s edge after ``n`` tokens; return the new upper node (the lower keeps its identity)."""
    parent = node.parent
    assert parent is not None, "the root has no edge to split"
    upper = TrieNode(node.key[:n], parent)
    parent.children[node.key[0]] = upper
    node.key, node.parent = node.key[n:], upper
    upper.children[node.key[0]] = node
    return upper
