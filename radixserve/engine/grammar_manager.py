"""Constrained decoding in the engine loop: compile off-loop, hold requests until their grammar is
ready, fill the batch's vocabulary mask while the model runs, advance matchers with sampled tokens.

A constrained request waits here (not in the scheduler) while xgrammar compiles its grammar in a
thread pool; other requests keep running. Once compiled it enters the scheduler like any other
request, so it still hits the prefix cache, is chunked, batched and retracted normally (its
matcher state lives on the request and survives retraction: the tokens it accepted are kept).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from radixserve.constrained import GrammarBackend, GrammarError, GrammarSpec, allocate_bitmask, bitmask_to_bool
from radixserve.core.plan import StepPlan
from radixserve.core.request import FinishReason, Request


class GrammarManager:
    def __init__(self, hf_tokenizer, vocab_size: int, stop_token_ids: tuple[int, ...]):
        self.vocab_size = vocab_size
        self.backend = GrammarBackend(hf_tokenizer, vocab_size, stop_token_ids=stop_token_ids, any_whitespace=False)
        self.pending: dict[str, tuple[Request, Future]] = {}
        self._mask_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-mask")

    def submit(self, request: Request) -> None:
        kind, text = request.sampling.grammar
        self.pending[request.request_id] = (request, self.backend.submit(GrammarSpec(kind, text)))

    def collect_ready(self) -> tuple[list[Request], list[Request]]:
        """Requests whose grammar compiled (matcher attached) and those whose grammar failed (finished)."""
        ready, failed = [], []
        for request_id, (request, future) in list(self.pending.items()):
            if not future.done():
                continue
            del self.pending[request_id]
            try:
                request.grammar = self.backend.new_matcher(future.result())
                ready.append(request)
            except GrammarError as exc:
                kind = request.sampling.grammar[0]
                request.finish(FinishReason("error", message=str(exc), param=kind))
                failed.append(request)
        return ready, failed

    def wait_any(self, timeout: float) -> None:
        futures = [future for _, future in self.pending.values()]
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def abort(self, request_id: str) -> Request | None:
        entry = self.pending.pop(request_id, None)
        return entry[0] if entry else None

    def start_masks(self, plan: StepPlan, requests: dict[str, Request]) -> Future | None:
        """Fill the allowed-token mask of this step's sampled rows in a thread (overlaps the forward)."""
        sampled = [requests[s.request_id] for s in plan.sequences if s.sample]
        if not any(r.grammar is not None for r in sampled):
            return None
        return self._mask_pool.submit(self._fill, sampled)

    def _fill(self, sampled: list[Request]) -> torch.Tensor:  # [num_sampled, vocab] bool, True = allowed
        bitmask = allocate_bitmask(len(sampled), self.vocab_size)
        for row, request in enumerate(sampled):
            if request.grammar is not None:
                request.grammar.fill_mask(bitmask, row)
        return bitmask_to_bool(bitmask, self.vocab_size)

    @staticmethod
    def advance(request: Request) -> FinishReason | None:
        """Feed the newest sampled token to the matcher; the finish reason when the grammar has ended."""
        if request.grammar is None or request.finished:
            return None
        token = request.output_ids[-1]
        if not request.grammar.accept(token):
            return FinishReason("error", message=f"token {token} violates the output grammar")
        if request.grammar.is_terminated():
            return FinishReason("stop", matched=token)
        return None

    def shutdown(self) -> None:
        self._mask_pool.shutdown(wait=False)
        self.backend.shutdown()
