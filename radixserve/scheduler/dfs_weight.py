"""The ``dfs-weight`` order: a depth-first walk of a prefix tree, heaviest subtree first.

Two trees take part, one inside the other:

- the radix cache: each candidate sits at the node where its cached prefix ends. Children are
  visited before the node's own candidates (post-order, as in SGLang), so a request that reuses a
  deeper cached prefix goes before one that would compute it, and requests without any hit (at
  the root) go last: a small KV pool fills with the prefixes already there, not with new ones.
- the waiting requests themselves: candidates at one cache node share everything up to it, and
  their uncached tails may still share a prefix (a system prompt not computed yet, or evicted).
  They are ordered by the same walk over a trie of those tails (one per cache namespace), so such
  a group is admitted together, its prefix computed once, before the next group is started.

Siblings go heaviest first (most waiting candidates under them); ties go to the subtree whose
earliest candidate comes first in the input. Candidates ending at one node keep their input order.

Cost: the tail tries are rebuilt at every ordering, one pass (list comparisons in C) over the first
``TAIL_TOKENS`` uncached tokens of each waiting request (prompts that share that many tokens are
grouped; a longer shared run is found by the in-batch check at admission anyway). On the GPU
constrained-pool workload (1,024 waiting 2,176-token prompts) that is ~1.9 ms a step on a 2-core CPU
against lpm's ~1 ms (``python -m bench.schedule_sim``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixserve.scheduler.token_trie import TokenTrie

# Uncached tokens of each candidate grouped by: prompts sharing this many uncached tokens are one
# group (computing the rest once more costs less than reading every waiting prompt whole each step).
TAIL_TOKENS = 256

if TYPE_CHECKING:
    from radixserve.scheduler.policy import Candidate


def dfs_weight_order(candidates: list[Candidate]) -> list[Candidate]:
    """Every candidate once: by the cache tree, then by shared uncached tails within a cache node."""
    ordered: list[Candidate] = []
    for group in _post_order([(c.node, c) for c in candidates]):
        ordered.extend(_by_uncached_tail(group))
    return ordered


def _by_uncached_tail(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates sharing one cached prefix, ordered by the prefixes their uncached tails share."""
    if len(candidates) < 2:
        return candidates
    tries: dict[str | None, TokenTrie] = {}
    placed = []
    for candidate in candidates:
        request = candidate.request
        ids = request.ids_to_read
        # the cache match stops at len - 1 too; groups show in a tail's first tokens: read no more
        tail = ids[candidate.match_len : min(len(ids) - 1, candidate.match_len + TAIL_TOKENS)]
        trie = tries.get(candidate.request.extra_key)
        if trie is None:
            trie = tries[candidate.request.extra_key] = TokenTrie()
        placed.append((trie.insert(tail), candidate))
    return [candidate for group in _post_order(placed) for candidate in group]


def _post_order(placed: list[tuple[object, Candidate]]) -> list[list[Candidate]]:
    """The candidates ending at each node, children's before their parent's, heaviest sibling first.

    ``placed`` pairs each candidate with a tree node; only ``node.parent`` is read (None: a root)."""
    own: dict[int, list[Candidate]] = {}
    weight: dict[int, int] = {}  # candidates at or under the node
    first: dict[int, int] = {}  # input position of the first of them
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

    def heaviest_last(nodes) -> list[tuple[object, bool]]:  # a stack pops them heaviest first
        return [(n, False) for n in sorted(nodes, key=lambda n: (weight[id(n)], -first[id(n)]))]

    groups: list[list[Candidate]] = []
    stack = heaviest_last(roots.values())
    while stack:
        node, children_done = stack.pop()
        if children_done:
            groups.append(own.get(id(node), []))
        else:
            stack.append((node, True))
            stack.extend(heaviest_last(children.get(id(node), {}).values()))
    return [group for group in groups if group]
