"""The engine loop body: schedule → execute → update → detokenize, one call to ``step()``.

``EngineCore`` is synchronous and single-threaded; the offline ``Engine`` drives it in-process and
the HTTP server drives it in its own process.
"""

from __future__ import annotations

import logging

from radixserve.config import ServerArgs
from radixserve.core.request import FinishReason, Request
from radixserve.core.sampling_params import InvalidParamError, SamplingParams
from radixserve.engine.build import build_engine_parts
from radixserve.engine.grammar_manager import GrammarManager
from radixserve.engine.output_processor import OutputProcessor, RequestOutput
from radixserve.engine.step_log import StepLog

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, args: ServerArgs):
        self.args = args
        parts = build_engine_parts(args)
        self.parts = parts
        self.tokenizer = parts.tokenizer
        self.scheduler = parts.scheduler
        self.cache = parts.cache
        self.runner = parts.runner
        self.model_config = parts.model_config
        self.context_length = parts.context_length
        self.outputs = OutputProcessor(parts.tokenizer)
        self.requests: dict[str, Request] = {}
        self.num_tokens_computed = 0
        self.num_steps = 0
        self.vocab_size = parts.model_config.vocab_size
        self.step_log = StepLog()
        self._grammar: GrammarManager | None = None  # built on the first constrained request
        self.overlap = not args.disable_overlap_schedule
        self._deferred: list[Request] = []  # sampled last step, not yet detokenized

    @property
    def grammar(self) -> GrammarManager:
        if self._grammar is None:
            eos = tuple(self.tokenizer.eos_token_ids)
            self._grammar = GrammarManager(self.tokenizer.hf, self.vocab_size, eos)
        return self._grammar

    # ---- requests ---------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt_ids: list[int], sampling: SamplingParams, extra_key: str | None = None
    ) -> None:
        """Queue a request, or raise ``InvalidParamError`` if it can never run."""
        if request_id in self.requests:
            raise InvalidParamError(f"duplicate request id {request_id!r}", "rid")
        sampling.validate(self.vocab_size)
        vocab = min(self.vocab_size, self.tokenizer.vocab_size)
        if any(not (0 <= t < vocab) for t in prompt_ids):
            raise InvalidParamError(f"prompt token ids must be in [0, {vocab})", "input_ids")
        eos = () if sampling.ignore_eos else tuple(self.tokenizer.eos_token_ids)
        stop_ids = tuple(dict.fromkeys(eos + tuple(sampling.stop_token_ids)))
        request = Request(request_id, list(prompt_ids), sampling, extra_key=extra_key, stop_token_ids=stop_ids)
        if sampling.grammar is None:
            self.scheduler.add_request(request)
        else:
            if self.args.grammar_backend == "none":
                raise InvalidParamError("constrained decoding is off (--grammar-backend none)", sampling.grammar[0])
            self.scheduler.check_fits(request)
            self.grammar.submit(request)  # enters the scheduler once its grammar has compiled
        self.requests[request_id] = request
        self.outputs.add(request)

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.scheduler.abort(request_id)
        if request is None and self._grammar is not None:
            request = self._grammar.abort(request_id)
            if request is not None:
                request.finish(FinishReason("abort", message="aborted"))
        if request is None:
            return None
        output, _ = self.outputs.process(request)
        self.requests.pop(request_id, None)
        return output

    def flush_cache(self) -> bool:
        if self.scheduler.has_work:
            return False
        return self.cache.flush()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or bool(self._deferred) or bool(self._grammar and self._grammar.pending)

    # ---- the loop body ----------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return an output for every request that produced tokens.

        Overlap: once step N is queued on the device, the CPU detokenizes step N-1's tokens (and
        matches stop strings) before waiting for N. A stop string found then finishes its request
        one step late; the extra token it computed is dropped.
        """
        outputs = self._admit_compiled()
        plan = self.scheduler.schedule()
        if not plan:
            outputs += self._process_deferred()
            if self._grammar is not None and self._grammar.pending:
                self._grammar.wait_any(timeout=0.005)  # nothing runnable yet: don't spin on the compile
            return outputs
        masks = self._grammar.start_masks(plan, self.requests) if self._grammar is not None else None
        try:
            pending = self.runner.launch(plan, vocab_mask=masks.result if masks is not None else None)
            if self.overlap:
                outputs += self._process_deferred()
            result = pending.result()
        except Exception as exc:  # a failed step must not poison the cache or wedge the loop
            logger.exception("step failed; finishing its %d requests with an error", len(plan.sequences))
            return outputs + self._fail_step(plan, f"{type(exc).__name__}: {exc}") + self._process_deferred()
        self.scheduler.update(plan, result)  # finished requests are among the sampled ones below
        self.num_tokens_computed += result.num_tokens_computed
        self.num_steps += 1
        self.step_log.record(plan, self.scheduler)
        touched = [self.requests[s.request_id] for s in plan.sequences if s.sample and s.request_id in self.requests]
        for request in touched:
            reason = GrammarManager.advance(request)
            if reason is not None:
                self.scheduler.finish(request, reason)
        self._deferred.extend(touched)
        if not self.overlap:
            outputs += self._process_deferred()
        return outputs

    def _process_deferred(self) -> list[RequestOutput]:
        """Detokenize the requests touched by the last step; finish those whose stop string matched."""
        outputs = []
        deferred, self._deferred = self._deferred, []
        for request in deferred:
            if self.requests.get(request.request_id) is not request:  # aborted meanwhile: already reported
                continue
            output, matched_stop = self.outputs.process(request)
            if matched_stop is not None:
                self.scheduler.finish(request, FinishReason("stop", matched=matched_stop))
            if output.finished:
                self.requests.pop(request.request_id, None)
            outputs.append(output)
        return outputs

    def _fail_step(self, plan, message: str) -> list[RequestOutput]:
        """The step's KV was never written: drop those positions, then finish every request in it."""
        outputs = []
        for seq in plan.sequences:
            request = self.requests.get(seq.request_id)
            if request is None:  # finished by a stop string while the step ran: its KV is already released
                continue
            self.cache.truncate(request, seq.prefix_len)
            self.scheduler.finish(request, FinishReason("error", message=message))
            output, _ = self.outputs.process(request)
            self.requests.pop(request.request_id, None)
            outputs.append(output)
        return outputs

    def _admit_compiled(self) -> list[RequestOutput]:
        """Move requests whose grammar compiled into the scheduler; fail those whose grammar is invalid."""
        if self._grammar is None or not self._grammar.pending:
            return []
        ready, failed = self._grammar.collect_ready()
        for request in ready:
            self.scheduler.add_request(request)
        outputs = []
        for request in failed:
            output, _ = self.outputs.process(request)
            self.requests.pop(request.request_id, None)
            outputs.append(output)
        return outputs

    def stats(self) -> dict:
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_steps": self.num_steps,
            "num_tokens_computed": self.num_tokens_computed,
            "num_retractions": self.scheduler.num_retractions,
            "prefix_query_tokens": self.cache.num_query_tokens,
            "prefix_hit_tokens": self.cache.num_hit_tokens,
            "kv": self.cache.accounting(),
        }

    def check_invariants(self) -> None:
        self.scheduler.check_invariants()
