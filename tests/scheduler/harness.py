"""Drive a real Scheduler + PrefixCache with the KV oracle; check the invariants after every step.

``overlap=True`` drives it like the engine's overlap loop: each step is scheduled and executed
*before* the previous one is resolved, so every decode input is in flight and the harness always
holds one unresolved step.
"""

from __future__ import annotations

from radixserve.cache.prefix_cache import PrefixCache
from radixserve.config import SchedulerConfig
from radixserve.core.request import FinishReason, Request
from radixserve.core.sampling_params import SamplingParams
from radixserve.scheduler.scheduler import Scheduler
from tests.scheduler.kv_oracle import KVOracle


class Harness:
    def __init__(self, pool_size: int = 64, disable_radix_cache: bool = False, overlap: bool = False, **config):
        config.setdefault("context_length", 4096)
        self.overlap = overlap
        self.pending = None  # (plan, result) executed but not yet resolved
        self.cache = PrefixCache(pool_size, disable_radix_cache=disable_radix_cache)
        self.scheduler = Scheduler(SchedulerConfig(**config), self.cache)
        self.oracle = KVOracle()
        self.plans = []
        self.finished: dict[str, Request] = {}
        self.failed: dict[str, Request] = {}

    def add(self, request_id: str, prompt: list[int], max_new_tokens: int = 4, stop_ids=(), **params) -> Request:
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **params)
        request = Request(request_id, list(prompt), sampling, stop_token_ids=tuple(stop_ids))
        self.scheduler.add_request(request)
        return request

    def step(self, fail: bool = False):
        """Schedule and execute a step (``fail``: it dies on the device and is resolved as failed)."""
        plan = self.scheduler.schedule()
        self.plans.append(plan)
        launched = (plan, self.oracle.execute(plan, fail=fail), fail) if plan else None
        self.resolve()
        self.pending = launched
        if not self.overlap:
            self.resolve()
        self.scheduler.check_invariants()
        return plan

    def resolve(self) -> None:
        if self.pending is None:
            return
        plan, result, fail = self.pending
        self.pending = None
        if fail:
            for request in self.scheduler.fail(plan, FinishReason("error", message="injected")):
                self.failed[request.request_id] = request
            return
        for request in self.scheduler.update(plan, result):
            if request.finished:
                self.finished[request.request_id] = request

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self.pending is not None

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.has_work:
                return
            self.step()
        raise AssertionError("scheduler did not drain")

    def assert_idle_accounting(self) -> None:
        acct = self.cache.accounting()
        assert acct["protected"] == 0
        assert acct["free"] + acct["evictable"] == acct["pool_size"]
