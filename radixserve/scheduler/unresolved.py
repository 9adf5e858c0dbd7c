"""Plans between ``Scheduler.schedule()`` and their ``update()``/``fail()``: the overlap schedule's window.

The engine launches step N+1 before resolving step N, so the scheduler must know, per request,
what launched steps are still computing:

- which Request *objects* each plan covers (results go to them, even if retracted or re-queued);
- the first position each plan computes for a request: positions from there on are *unwritten*
  (a failed step never writes them) and must not enter the radix tree yet;
- how many tokens each request has in flight (``Request.num_inflight``, checked here).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from radixserve.core.plan import StepPlan
from radixserve.core.request import Request


@dataclass
class _Unresolved:
    plan: StepPlan
    requests: list[Request]  # parallel to plan.sequences
    prefix_lens: dict[int, int]  # id(request) -> first position the plan computes for it


class UnresolvedPlans:
    def __init__(self):
        self._steps: list[_Unresolved] = []  # oldest first

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, plan: StepPlan, requests: list[Request]) -> None:
        prefix_lens = {id(r): seq.prefix_len for seq, r in zip(plan.sequences, requests)}
        self._steps.append(_Unresolved(plan, requests, prefix_lens))

    def pop(self, plan: StepPlan) -> list[Request]:
        """Forget ``plan`` (it is being resolved); the requests it covers, parallel to its sequences."""
        for i, step in enumerate(self._steps):
            if step.plan is plan:
                return self._steps.pop(i).requests
        raise ValueError("plan is not an unresolved plan of this scheduler")

    def covers(self, request: Request) -> bool:
        return any(id(request) in step.prefix_lens for step in self._steps)

    def num_written(self, request: Request) -> int:
        """Leading positions of ``request`` whose K/V no unresolved plan is still computing."""
        written = request.num_computed
        for step in self._steps:
            written = min(written, step.prefix_lens.get(id(request), written))
        return written

    def prefilling_ids(self) -> set[str]:
        """Requests with a multi-token chunk in flight (in the tree only once resolved)."""
        return {seq.request_id for step in self._steps for seq in step.plan.sequences if len(seq.input_ids) > 1}

    def check(self, requests: list[Request]) -> None:
        """Each request's ``num_inflight`` equals its sampled sequences among the unresolved plans."""
        counts = Counter(
            id(r) for step in self._steps for seq, r in zip(step.plan.sequences, step.requests) if seq.sample
        )
        for request in requests:
            assert request.num_inflight == counts[id(request)], f"{request.request_id}: num_inflight is off"
