"""Waiting-queue orderings as pure functions over (request, cached-prefix match) candidates.

- ``fcfs``: arrival order.
- ``lpm``: longest cached prefix first, so requests reuse what is in the tree before it is
  evicted.
- ``dfs-weight``: walks the radix tree depth first, visiting the subtree with the most waiting
  requests first, so requests under one shared prefix are admitted together; deeper cache hits
  before shallower ones, and requests sharing a prefix not (or no longer) cached grouped too
  (``dfs_weight.py``).

Starvation: a waiting request's *tier* grows by one every ``aging_steps`` steps it waits, and
higher tiers go first; the policy orders each tier. A request with no cache hit therefore goes
before every request that arrived ``aging_steps`` or more after it, however well those hit. Requests
that arrived in the same step (an offline batch) stay in one tier as they age, and requests a few
steps apart (a burst) share one but for the few steps each period when a tier boundary falls
between them, so their cache-aware order holds however long they wait: aging them into arrival
order, as a plain "aged first, FCFS" rule would, throws the policy away exactly when a long queue
needs it.
``aging_steps <= 0``: arrival order throughout.

Long queues: the cache-aware policies look up and order the ``MATCH_WINDOW`` longest-waiting
requests; any beyond follow in arrival order. A lookup resumes from the request's last one
(``PrefixCache.peek_match``), so the lookups of a step cost what changed in the tree, not the
queue's length in tokens: on a 2-core CPU, lpm over 1,024 waiting 2,176-token prompts costs
~1–1.7 ms a step (``python -m bench.schedule_sim``). ``dfs-weight`` also reads the first
``dfs_weight.TAIL_TOKENS`` uncached tokens of every candidate into its tries at each ordering: ~1.5×
lpm's host time on that queue. (Before, ``lpm`` fell back to FCFS past 128 waiting requests, as
SGLang's does, and lost its hits exactly in the offline batches and bursts that fill a queue.)
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.core.request import Request
from radixserve.scheduler.dfs_weight import dfs_weight_order

POLICIES = ("lpm", "fcfs", "dfs-weight")
MATCH_WINDOW = 2048


@dataclass
class Candidate:
    request: Request
    match_len: int = 0
    node: object = None  # the deepest matched radix-tree node (has .parent)


def needs_match(policy: str) -> bool:
    """Whether the policy orders by prefix matches."""
    return policy in ("lpm", "dfs-weight")


def order(policy: str, candidates: list[Candidate], current_step: int, aging_steps: int) -> list[Candidate]:
    """Highest waiting tier first; within a tier, the policy's order (see the module docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown schedule policy {policy!r} (choose from {', '.join(POLICIES)})")
    by_arrival = sorted(candidates, key=_arrival)
    if not needs_match(policy) or aging_steps <= 0:
        return by_arrival
    tiers: dict[int, list[Candidate]] = {}
    for candidate in by_arrival:
        tiers.setdefault((current_step - candidate.request.arrival_step) // aging_steps, []).append(candidate)
    ordered: list[Candidate] = []
    for tier in sorted(tiers, reverse=True):
        if policy == "lpm":
            ordered += sorted(tiers[tier], key=lambda c: -c.match_len)  # stable: arrival order within a length
        else:
            ordered += dfs_weight_order(tiers[tier])
    return ordered


def _arrival(candidate: Candidate) -> int:
    return candidate.request.arrival_step
