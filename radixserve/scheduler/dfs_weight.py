"""The ``dfs-weight`` order: a depth-first walk of a prefix tree, heaviest subtree first.

Two trees take part, one inside the other:

- the radix cache: each candidate sits at the node where its cached prefix ends. Children are
  visited before the node's own candidates (post-order, as in SGLang), so a request that reuses a
  deeper cached prefix goes before one that would compute it, and requests without any hit (at
  the root) go last: a small KV pool fills with the prefixes already there, not with new ones.
- the waiting requests themselves: candidates at one cache node share everything up to it, and
  their uncached tails may still share a prefix (a system prompt not computed yet, or evicted).
  They are ordered by the same walk over a tree of those tails, so a group is admitted together
  and computes its prefix once instead of a few members at a time between other groups.

Siblings go heaviest first (most waiting candidates under them); ties go to the subtree whose
earliest candidate came first. Within a node, candidates keep their queue order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixserve.cache.radix_tree import RadixTree

if TYPE_CHECKING:
    from radixserve.scheduler.policy import Candidate


def dfs_weight_order(candidates: list[Candidate]) -> list[Candidate]:
    """Every candidate once: by the cache tree, then by shared uncached tails within a cache node."""
    ordered: list[Candidate] = []
    for group in _post_order([(c.node, c) for c in candidates]):
        ordered.extend(_by_uncached_tail(group))
    return ordered


def _by_uncached_tail(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates sharing one cached prefix, grouped by the prefixes their uncached tails share."""
    if len(candidates) < 2:
        return candidates
    index = RadixTree()
    tails = []
    for candidate in candidates:
        ids = candidate.request.all_ids
        tail = ids[candidate.match_len : len(ids) - 1]  # the admission match stops at len - 1 too
        index.insert(tail, [0] * len(tail), candidate.request.extra_key)
        tails.append(tail)
    placed = [
        (index.match_prefix(tail, c.request.extra_key).node, c) for tail, c in zip(tails, candidates, strict=True)
    ]
    return [c for group in _post_order(placed) for c in group]


def _post_order(placed: list[tuple[object, Candidate]]) -> list[list[Candidate]]:
    """The candidates of each node (input order kept), children before parents, heaviest sibling first.

    ``placed`` pairs each candidate with a tree node; only ``node.parent`` is read (None: a root)."""
    own: dict[int, list[Candidate]] = {}
    weight: dict[int, int] = {}
    first: dict[int, int] = {}  # position in ``placed`` of the earliest candidate under the node
    children: dict[int, dict[int, object]] = {}
    roots: dict[int, object] = {}
    for rank, (node, candidate) in enumerate(placed):
        own.setdefault(id(node), []).append(candidate)
        while node is not None:
            weight[id(node)] = weight.get(id(node), 0) + 1
            first.setdefault(id(node), rank)
            parent = node.parent
            if parent is None:
                roots[id(node)] = node
            else:
                children.setdefault(id(parent), {})[id(node)] = node
            node = parent

    def lightest_first(nodes) -> list[tuple[object, bool]]:  # popped from a stack: heaviest first
        ranked = sorted(nodes, key=lambda n: (weight[id(n)], -first[id(n)]))
        return [(n, False) for n in ranked]

    groups: list[list[Candidate]] = []
    stack = lightest_first(roots.values())
    while stack:
        node, expanded = stack.pop()
        if expanded:
            groups.append(own.get(id(node), []))
        else:
            stack.append((node, True))
            stack.extend(lightest_first(children.get(id(node), {}).values()))
    return [group for group in groups if group]
