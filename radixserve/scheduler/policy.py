"""Waiting-queue orderings as pure functions over (request, cached-prefix match) candidates.

- ``fcfs``: arrival order.
- ``lpm``: longest cached prefix first, so requests reuse what is in the tree before it is
  evicted. Falls back to FCFS when the queue is long (matching every request costs more than it
  saves), and requests that have waited ``aging_steps`` go first in arrival order so a request
  with no cache hit is never starved.
- ``dfs-weight``: walks the radix tree depth first, visiting the subtree with the most waiting
  requests first, so requests under one shared prefix are admitted together; deeper cache hits
  before shallower ones, and requests sharing a prefix not (or no longer) cached grouped too
  (``dfs_weight.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.core.request import Request
from radixserve.scheduler.dfs_weight import dfs_weight_order

POLICIES = ("lpm", "fcfs", "dfs-weight")
LPM_MAX_QUEUE = 128


@dataclass
class Candidate:
    request: Request
    match_len: int = 0
    node: object = None  # the deepest matched radix-tree node (has .parent)


def needs_match(policy: str, queue_len: int) -> bool:
    """Whether the policy looks at prefix matches for a queue of this length."""
    return policy == "dfs-weight" or (policy == "lpm" and queue_len <= LPM_MAX_QUEUE)


def order(policy: str, candidates: list[Candidate], current_step: int, aging_steps: int) -> list[Candidate]:
    """Aged candidates first (arrival order, whatever the policy), then the policy's order."""
    aged = sorted((c for c in candidates if current_step - c.request.arrival_step >= aging_steps), key=_arrival)
    rest = [c for c in candidates if current_step - c.request.arrival_step < aging_steps]
    if policy == "fcfs" or not needs_match(policy, len(candidates)):
        return aged + sorted(rest, key=_arrival)
    if policy == "lpm":
        return aged + sorted(rest, key=lambda c: (-c.match_len, c.request.arrival_step))
    if policy == "dfs-weight":
        return aged + dfs_weight_order(sorted(rest, key=_arrival))
    raise ValueError(f"unknown schedule policy {policy!r} (choose from {', '.join(POLICIES)})")


def _arrival(candidate: Candidate) -> int:
    return candidate.request.arrival_step
