"""The cache-aware scheduler: one ``schedule()`` → ``StepPlan``, one ``update()`` per step.

Each step runs every decoding request (one token each) plus prefill chunks for newly admitted
or partially prefilled requests, within the ``chunked_prefill_size`` token budget. When decode
runs out of KV, the newest running requests are retracted: their computed tokens go into the
radix tree (so a re-admission usually recomputes almost nothing) and they re-queue.

Overlap schedule: ``schedule()`` may run again before the previous plan's ``update()`` (the engine
keeps one step in flight). A plan is *unresolved* from ``schedule()`` until ``update()`` or
``fail()`` (bookkeeping in ``unresolved.py``). While unresolved:

- each sampled sequence counts in its request's ``num_inflight``; a request with a token in flight
  decodes with a ``FUTURE_TOKEN`` input, and none is planned past ``max_new_tokens``;
- the positions it computes are *unwritten*: they never go into the radix tree (a retracted or
  finished request drops them), so a failed step never leaves bad K/V in the cache;
- its requests are not re-admitted after a retraction.

``update()`` applies results to the Request objects of that plan, wherever they are now: a request
retracted meanwhile keeps its token; one finished meanwhile (abort, stop string) drops it.
"""

from __future__ import annotations

from radixserve.cache.prefix_cache import PrefixCache
from radixserve.cache.radix_tree import RadixTree
from radixserve.config import SchedulerConfig
from radixserve.core.plan import SequencePlan, StepPlan, StepResult
from radixserve.core.request import FinishReason, Request
from radixserve.core.sampling_params import InvalidParamError
from radixserve.scheduler import policy
from radixserve.scheduler.policy import Candidate
from radixserve.scheduler.unresolved import UnresolvedPlans

# Remaining output tokens counted per request when reserving KV at admission.
_RESERVE_CLIP = 4096


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: PrefixCache):
        if config.schedule_policy not in policy.POLICIES:
            raise ValueError(f"unknown schedule policy {config.schedule_policy!r}")
        self.config = config
        self.cache = cache
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.step_count = 0
        self._last_prefill_only = False  # without mixed chunks: the last step held only prefill work
        self.num_retractions = 0
        # (request, cached prefix tokens) admitted by the latest schedule(), for logs and metrics
        self.last_admitted: list[tuple[Request, int]] = []
        self._unresolved = UnresolvedPlans()

    # ---- queue management -------------------------------------------------------------------

    def check_fits(self, request: Request) -> None:
        """Reject at once a request that could never run (context or KV pool too small)."""
        prompt_len, max_new = len(request.prompt_ids), request.sampling.max_new_tokens
        if prompt_len == 0:
            raise InvalidParamError("the prompt is empty", "prompt")
        limit = self.config.context_length
        if prompt_len + max_new > limit:
            raise InvalidParamError(
                f"this model's maximum context length is {limit} tokens; the request has {prompt_len} prompt "
                f"tokens and asks for {max_new} new tokens ({prompt_len + max_new} in total)",
                "max_new_tokens" if prompt_len < limit else "prompt",
            )
        if prompt_len + max_new > self.cache.pool_size:
            raise InvalidParamError(
                f"the request needs {prompt_len + max_new} KV slots ({prompt_len} prompt + {max_new} new tokens) "
                f"but the KV pool holds {self.cache.pool_size}",
                "max_new_tokens" if prompt_len < self.cache.pool_size else "prompt",
            )

    def add_request(self, request: Request) -> None:
        self.check_fits(request)
        request.arrival_step = self.step_count
        self.waiting.append(request)

    def abort(self, request_id: str, message: str = "aborted") -> Request | None:
        """Finish a waiting or running request as ``abort`` and free its KV. None if unknown.

        Tokens still in flight for it are dropped when their step is resolved."""
        for queue in (self.waiting, self.running):
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    self._release(request)
                    request.finish(FinishReason("abort", message=message))
                    return request
        return None

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Finish a request from outside (e.g. a stop string matched), free its KV, drop it from its queue."""
        request.finish(reason)
        if request in self.running:
            self.running.remove(request)
            self._release(request)
        elif request in self.waiting:  # retracted while its last token was in flight: holds no KV
            self.waiting.remove(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_unresolved(self) -> int:
        """Plans scheduled but not yet resolved by ``update()`` or ``fail()``."""
        return len(self._unresolved)

    # ---- scheduling -------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        """Plan the next step; it stays unresolved until ``update()`` or ``fail()`` (see the module docstring)."""
        plan = self._schedule()
        if plan:
            by_id = {r.request_id: r for r in self.running}  # every planned request is running
            self._unresolved.add(plan, [by_id[seq.request_id] for seq in plan.sequences])
        return plan

    def _schedule(self) -> StepPlan:
        self.step_count += 1
        self.last_admitted = []
        if not self.config.mixed_chunk:
            prefill = self._prefill_only_step()
            if prefill:
                return StepPlan(prefill)
        decoding = self._make_room_for_decode()
        # one slot each, in one call (when it must evict, the evicted slots go out first: which slot
        # a request gets does not matter)
        slots = self.cache.allocate(len(decoding))
        assert slots is not None, "decode slots reserved by _make_room_for_decode"
        self.cache.extend_each(decoding, slots)
        plans = [self._plan_allocated(request, 1) for request in decoding]
        if self.config.mixed_chunk:
            plans += self._prefill_work(plans, max(0, self.config.chunked_prefill_size - len(decoding)))
        if not plans and any(not r.awaiting_resolution for r in self.running):
            self._retract(self._newest_running())
            return self._schedule()
        return StepPlan(plans)

    def _prefill_only_step(self) -> list[SequencePlan]:
        """Without mixed chunks: this step's prefill work, unless the last step was prefill-only and
        decodes are waiting, so that prefill and decode steps alternate while both have work (a
        stream of arrivals must not stall the running requests)."""
        decodes_waiting = any(r.num_pending == 1 and not r.awaiting_resolution for r in self.running)
        if self._last_prefill_only and decodes_waiting:
            self._last_prefill_only = False
            return []
        plans = self._prefill_work([], self.config.chunked_prefill_size)
        self._last_prefill_only = bool(plans)
        return plans

    def _prefill_work(self, planned: list[SequencePlan], budget: int) -> list[SequencePlan]:
        """Next chunks of running requests still prefilling, then new admissions, within ``budget`` tokens."""
        plans: list[SequencePlan] = []
        for request in self.running:
            if request.num_pending > 1 and budget > 0:
                chunk = self._allocate_chunk(request, budget)
                if chunk:
                    plans.append(self._plan_allocated(request, chunk))
                    budget -= chunk
        plans.extend(self._admit(budget, planned + plans))
        return plans

    def _make_room_for_decode(self) -> list[Request]:
        """Ensure one free slot per decoding request, retracting the newest requests if needed."""
        while True:
            decoding = [r for r in self.running if r.num_pending == 1 and not r.awaiting_resolution]
            if self.cache.num_available >= len(decoding) or len(self.running) <= 1:
                return decoding
            self._retract(self._newest_running())

    def _allocate_chunk(self, request: Request, budget: int) -> int:
        chunk = min(request.num_pending, budget)
        slots = self.cache.allocate(chunk)
        if slots is None:
            return 0
        self.cache.extend(request, slots)
        return chunk

    def _plan_allocated(self, request: Request, num_tokens: int) -> SequencePlan:
        """Plan the last ``num_tokens`` allocated positions of ``request``."""
        end = len(request.slots)  # num_computed
        start = end - num_tokens
        num_output = len(request.output_ids) + request.num_inflight  # before this plan's token
        sample = end == len(request.prompt_ids) + num_output  # num_tokens
        plan = SequencePlan(
            request_id=request.request_id,
            input_ids=request.ids_between(start, end),
            prefix_len=start,
            slots=request.slots,
            sample=sample,
            sampling=request.sampling,
            prompt_ids=request.prompt_ids,
            output_ids=request.output_ids,
            stop_token_ids=request.stop_token_ids,
            slots_version=request.slots_version,
            num_output=num_output,
        )
        if sample:
            request.num_inflight += 1
        return plan

    # ---- admission ----------------------------------------------------------------------------

    def _admit(self, budget: int, planned: list[SequencePlan]) -> list[SequencePlan]:
        plans: list[SequencePlan] = []
        if not self.waiting or budget <= 0:
            return plans
        full = len(self.running) >= self.config.max_running_requests
        reserved = sum(self._reserve(r) for r in self.running)  # kept up to date as requests are admitted
        if full or self.cache.num_available <= reserved:
            # no request fits (see _try_admit): spare the ordering of a long queue, but keep the
            # prefixes the queue waits for fresher than those nobody wants (as its lookups would)
            if policy.needs_match(self.config.schedule_policy):
                self.cache.touch_waiting(self.waiting[: policy.MATCH_WINDOW])
            return plans
        # waiting for a prefix being prefilled pays only when it will be a hit: not without the cache
        inflight = None if self.cache.tree.disabled else self._inflight_index(planned)
        for candidate in self._ordered_candidates():
            if budget <= 0 or len(self.running) >= self.config.max_running_requests:
                break
            request = candidate.request
            if self._unresolved.covers(request):
                continue
            if inflight is not None and self._defer_for_inflight(candidate, inflight):
                continue
            chunk = self._try_admit(request, budget, reserved)
            if chunk is None:
                break  # admit in order: a large request is not overtaken forever
            self.waiting.remove(request)
            self.running.append(request)
            if inflight is not None:
                ids = request.all_ids
                inflight.insert(ids, [0] * len(ids), request.extra_key)
            plans.append(self._plan_allocated(request, chunk))
            reserved += self._reserve(request)
            budget -= chunk
        return plans

    def _ordered_candidates(self) -> list[Candidate]:
        name = self.config.schedule_policy
        if not policy.needs_match(name):
            return policy.order(name, [Candidate(r) for r in self.waiting], self.step_count, self.config.aging_steps)
        by_arrival = sorted(self.waiting, key=lambda r: r.arrival_step)  # stable: queue order within a step
        window, rest = by_arrival[: policy.MATCH_WINDOW], by_arrival[policy.MATCH_WINDOW :]
        candidates = [self._match_candidate(r) for r in window]
        ordered = policy.order(name, candidates, self.step_count, self.config.aging_steps)
        return ordered + [Candidate(r) for r in rest]

    def _match_candidate(self, request: Request) -> Candidate:
        match = self.cache.peek_match(request)
        return Candidate(request, match.length, match.node)

    def _inflight_index(self, planned: list[SequencePlan]) -> RadixTree:
        """Token ids being prefilled right now (this step's chunks, unresolved steps' chunks and what is
        still pending), to spot new requests that should wait and hit them instead of computing them again."""
        index = RadixTree()
        prefilling = {s.request_id for s in planned if len(s.input_ids) > 1}
        prefilling |= self._unresolved.prefilling_ids()
        for request in self.running:
            if request.num_pending > 1 or request.request_id in prefilling:
                ids = request.all_ids
                index.insert(ids, [0] * len(ids), request.extra_key)
        return index

    def _defer_for_inflight(self, candidate: Candidate, inflight: RadixTree) -> bool:
        request = candidate.request
        ids = request.all_ids
        shared = len(inflight.match_prefix(ids[: len(ids) - 1], request.extra_key).slots)
        if shared == 0:
            return False
        # policies that do not match (fcfs, long lpm queues) leave match_len unknown: look it up now
        match_len = candidate.match_len if candidate.node is not None else self.cache.peek_match_len(request)
        gain = shared - match_len
        return gain > 0 and gain >= min(self.config.in_batch_prefix_threshold, len(ids) - 1 - match_len)

    def _try_admit(self, request: Request, budget: int, reserved: int) -> int | None:
        """Lock the request's cached prefix and allocate its first chunk; None (nothing held) if KV is
        short. ``reserved``: what the running requests keep free for their outputs (``_reserve``)."""
        match_len = self.cache.match_and_lock(request)
        reserve = reserved + self._reserve(request)
        chunk = min(request.num_pending, budget)
        if self.cache.num_available < request.num_pending + reserve:
            self.cache.release(request, keep=False)
            return None
        slots = self.cache.allocate(chunk)
        assert slots is not None
        self.cache.extend(request, slots)
        request.prefix_hint = None  # running now: the hint would only keep its node alive
        self.last_admitted.append((request, match_len))
        if not request.admitted:
            request.admitted = True
            request.num_cached_tokens = match_len
            self.cache.record_query(len(request.prompt_ids), match_len)
        return chunk

    def _reserve(self, request: Request) -> int:
        return int(min(request.remaining_new_tokens, _RESERVE_CLIP) * self.config.new_token_ratio)

    # ---- retraction ---------------------------------------------------------------------------

    def _newest_running(self) -> Request:
        # Not one awaiting resolution (it finishes then anyway); ties: the latest admitted.
        candidates = [r for r in self.running if not r.awaiting_resolution] or self.running
        return max(reversed(candidates), key=lambda r: r.arrival_step)

    def _retract(self, request: Request) -> None:
        self.running.remove(request)
        self._release(request)
        request.num_retractions += 1
        self.num_retractions += 1
        self.waiting.insert(0, request)

    # ---- results ------------------------------------------------------------------------------

    def update(self, plan: StepPlan, result: StepResult) -> list[Request]:
        """Resolve ``plan`` with its results; return the requests that got a token (or finished) from it.

        Finished requests are among them with their KV released. A request finished before this
        call (abort, stop string, failure) is skipped: its token is dropped."""
        requests = self._unresolved.pop(plan)
        touched: list[Request] = []
        for seq, request in zip(plan.sequences, requests):
            if seq.sample:
                request.num_inflight -= 1
            if request.finished:
                continue
            if seq.sample:
                self._append_token(request, result.results[seq.request_id])
                touched.append(request)
            if not request.finished and (not seq.sample or len(seq.input_ids) > 1):
                self._cache_written(request)  # a chunk or a whole prefill: siblings and followers can hit it
        for request in touched:
            if request.finished:
                self.finish(request, request.finish_reason)  # out of its queue, KV released
        return touched

    def fail(self, plan: StepPlan, reason: FinishReason) -> list[Request]:
        """Resolve ``plan`` as failed: its K/V was never written. Its requests still alive lose the
        positions it (and any later unresolved plan) computes and finish with ``reason``; returned."""
        requests = self._unresolved.pop(plan)
        failed: list[Request] = []
        for seq, request in zip(plan.sequences, requests):
            if seq.sample:
                request.num_inflight -= 1
            if request.finished:
                continue
            if request.cache_node is not None:
                self.cache.truncate(request, min(seq.prefix_len, request.num_computed))
            self.finish(request, reason)
            failed.append(request)
        return failed

    # ---- unwritten positions ------------------------------------------------------------------

    def _cache_written(self, request: Request) -> None:
        """``cache_computed`` for the written positions only; the unwritten tail stays private."""
        if request.cache_node is None:  # retracted while the step ran: holds no KV
            return
        written = self._unresolved.num_written(request)
        unwritten = request.slots[written:]
        del request.slots[written:]
        self.cache.cache_computed(request)
        request.slots.extend(unwritten)

    def _release(self, request: Request) -> None:
        """Give back all KV: written positions go into the tree, unwritten ones are freed.

        Freeing a slot an in-flight step still writes is safe: any later owner writes it in a later step."""
        if request.cache_node is not None:
            self.cache.truncate(request, self._unresolved.num_written(request))
        self.cache.release(request, keep=True)

    def _append_token(self, request: Request, sampled) -> None:
        if request.sampling.max_new_tokens == 0:  # prefill only (e.g. to warm the cache)
            request.finish(FinishReason("length"))
            return
        token = sampled.token_id
        request.output_ids.append(token)
        request.output_logprobs.append(sampled.logprob)
        request.output_top_logprobs.append(sampled.top_logprobs)
        if token in request.stop_token_ids and len(request.output_ids) > request.sampling.min_new_tokens:
            request.finish(FinishReason("stop", matched=token))
        elif len(request.output_ids) >= request.sampling.max_new_tokens:
            request.finish(FinishReason("length"))

    # ---- checks -------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        private = sum(r.num_private_slots for r in self.running)
        self.cache.check_invariants(num_private_slots_expected=private)
        for request in self.waiting:
            assert not request.slots and request.cache_node is None, "a waiting request holds KV"
        self._unresolved.check(self.running + self.waiting)
        for request in self.running:
            assert request.num_pending >= 1, f"{request.request_id}: running with nothing to compute"
        if not self.running:
            assert self.cache.accounting()["protected"] == 0, "no request alive but KV is protected"
