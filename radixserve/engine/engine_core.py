"""The engine loop body: schedule → launch → resolve (update, grammar, detokenize), one call to ``step()``.

``EngineCore`` is single-threaded; the offline ``Engine`` drives it in-process and the HTTP server
drives it in its own process. With the overlap schedule (the default) a step is resolved during
the next call, after the following step has been launched (see ``step``).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

from radixserve.config import ServerArgs
from radixserve.core.plan import StepPlan
from radixserve.core.request import FinishReason, Request
from radixserve.core.sampling_params import InvalidParamError, SamplingParams
from radixserve.engine.build import build_engine_parts
from radixserve.engine.grammar_manager import GrammarManager
from radixserve.engine.output_processor import OutputProcessor, RequestOutput
from radixserve.engine.step_log import StepLog

logger = logging.getLogger(__name__)


@dataclass
class _Launched:
    plan: StepPlan
    pending: object  # the runner's PendingStep: ``result()`` waits for the step's StepResult
    admitted: list[int]  # prefix-hit length of each request this step admitted (for the batch log)


GC_GEN0_THRESHOLD = 20_000  # allocations (net of deallocations) between young collections


def _freeze_startup_objects() -> None:
    """Move every object alive after startup (torch, transformers, the tokenizer, the model: ~300k)
    out of the cyclic garbage collector's reach. Otherwise each full collection walks them all:
    183 ms against 24 ms frozen on this project's CPU machine (``python -m bench.host_step``),
    triggered now and then by a large batch's per-step allocations, on the loop's time. They live as long as the process; the price, for an application that embeds the
    offline ``Engine``, is that cycles among its own objects alive at that moment are never
    collected either (vLLM and SGLang freeze the same way).

    Also raises the collector's first threshold to ``GC_GEN0_THRESHOLD`` (never lowers it): a
    decode step of 1,024 requests allocates enough short-lived objects (plans, outputs) to run ten
    young collections a step at Python's default of 700, and their survivors trigger a full
    collection every ~10 steps. Measured on this project's CPU machine (``python -m bench.host_step
    --batch-sizes 1024 --steps 20 --timers --whole-text``, then with ``--gc-threshold 700``): 199
    young and 2 full collections in 20 steps, 4.8 ms of collector time a step, at 700; none at
    20,000 (the decode log lines' ``gc ms`` shows it on a live engine). Like the freeze, it holds for the whole process,
    including an application that embeds the offline ``Engine``."""
    gc.collect()
    gc.freeze()
    threshold, *older = gc.get_threshold()
    if threshold < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, *older)


def _needs_exact_history(request: Request) -> bool:
    """Grammar masks and penalties read every previous token, so they cannot sample on in-flight ones."""
    params = request.sampling
    return (
        request.grammar is not None
        or params.repetition_penalty != 1.0
        or bool(params.frequency_penalty)
        or bool(params.presence_penalty)
    )


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
        self._grammar: GrammarManager | None = None  # built on the first constrained request
        self.overlap = not args.disable_overlap_schedule
        self._inflight: _Launched | None = None  # launched, not yet resolved (at most one between steps)
        _freeze_startup_objects()
        self.step_log = StepLog()  # after the startup collection, which is not a step's

    @property
    def grammar(self) -> GrammarManager:
        if self._grammar is None:
            eos = tuple(self.tokenizer.eos_token_ids)
            self._grammar = GrammarManager(self.tokenizer.hf, self.vocab_size, eos)
        return self._grammar

    # ---- requests ---------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling: SamplingParams,
        extra_key: str | None = None,
        stream: bool = True,
    ) -> None:
        """Queue a request, or raise ``InvalidParamError`` if it can never run. ``stream``: text deltas
        at every step; False when only the whole text is wanted (``Request.stream_text``)."""
        if request_id in self.requests:
            raise InvalidParamError(f"duplicate request id {request_id!r}", "rid")
        sampling.validate(self.vocab_size)
        vocab = min(self.vocab_size, self.tokenizer.vocab_size)
        if any(not (0 <= t < vocab) for t in prompt_ids):
            raise InvalidParamError(f"prompt token ids must be in [0, {vocab})", "input_ids")
        eos = () if sampling.ignore_eos else tuple(self.tokenizer.eos_token_ids)
        stop_ids = tuple(dict.fromkeys(eos + tuple(sampling.stop_token_ids)))
        request = Request(
            request_id, list(prompt_ids), sampling, extra_key=extra_key, stop_token_ids=stop_ids, stream_text=stream
        )
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
        """Empty the prefix cache; refused (False) while any request is alive or a step is in flight."""
        if self.scheduler.has_work or self._inflight is not None:
            return False
        return self.cache.flush()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._inflight is not None or bool(self._grammar and self._grammar.pending)

    # ---- the loop body ----------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return an output for every request that produced tokens.

        Overlap (the default): schedule and launch step N+1, then resolve step N (wait for its
        tokens, update, advance grammars, detokenize) while N+1 runs, so the device always has the
        next step queued. At most one launched step is unresolved between calls. Requests whose
        sampling needs exact history (a grammar mask, penalties) make the step synchronous: the
        pending step is resolved before scheduling. With ``--disable-overlap-schedule``, or when no
        live request is left (the launched step holds only finished ones), a step is resolved right
        after its launch, so an idle engine never has a step in flight.
        """
        outputs = self._admit_compiled()
        if self._inflight is not None and self._needs_exact_history():
            outputs += self._resolve()
        started = time.perf_counter()
        plan = self.scheduler.schedule()
        self.step_log.host("schedule", time.perf_counter() - started)
        if not plan:
            if self._inflight is not None:
                return outputs + self._resolve()
            if self._grammar is not None and self._grammar.pending:
                self._grammar.wait_any(timeout=0.005)  # nothing runnable yet: don't spin on the compile
            return outputs
        started = time.perf_counter()
        launched, failed = self._launch(plan)
        self.step_log.host("launch", time.perf_counter() - started)
        outputs += failed + self._resolve()
        self._inflight = launched
        if not self.overlap or not self.scheduler.has_work:  # no live request left to overlap with
            outputs += self._resolve()
        return outputs

    def _needs_exact_history(self) -> bool:
        """A running request with a token in flight samples from masks or penalties over its history."""
        return any(request.num_inflight and _needs_exact_history(request) for request in self.scheduler.running)

    def _launch(self, plan: StepPlan) -> tuple[_Launched | None, list[RequestOutput]]:
        masks = self._grammar.start_masks(plan, self.requests) if self._grammar is not None else None
        try:
            pending = self.runner.launch(plan, vocab_mask=masks.result if masks is not None else None)
        except Exception as exc:  # a failed step must not poison the cache or wedge the loop
            return None, self._fail_step(plan, exc)
        return _Launched(plan, pending, [match_len for _, match_len in self.scheduler.last_admitted]), []

    def _resolve(self) -> list[RequestOutput]:
        """Wait for the in-flight step's tokens and apply them; outputs of the requests it touched."""
        launched, self._inflight = self._inflight, None
        if launched is None:
            return []
        started = time.perf_counter()
        try:
            result = launched.pending.result()
        except Exception as exc:
            return self._fail_step(launched.plan, exc)
        resumed = time.perf_counter()
        waited = resumed - started
        touched = self.scheduler.update(launched.plan, result)  # finished requests included, KV released
        self.num_tokens_computed += result.num_tokens_computed
        self.num_steps += 1
        self.step_log.record(launched.plan, self.scheduler, launched.admitted, waited)
        for request in touched:
            reason = GrammarManager.advance(request)
            if reason is not None:
                self.scheduler.finish(request, reason)
        outputs = self._emit(touched)
        self.step_log.host("apply", time.perf_counter() - resumed)
        return outputs

    def _emit(self, touched: list[Request]) -> list[RequestOutput]:
        """Detokenize the requests a step touched; finish those whose stop string matched."""
        outputs = []
        for request in touched:
            if self.requests.get(request.request_id) is not request:  # aborted meanwhile: already reported
                continue
            output, matched_stop = self.outputs.process(request)
            if matched_stop is not None:
                self.scheduler.finish(request, FinishReason("stop", matched=matched_stop))
            if output.finished:
                self.requests.pop(request.request_id, None)
            outputs.append(output)
        return outputs

    def _fail_step(self, plan: StepPlan, exc: Exception) -> list[RequestOutput]:
        """The step's KV was never written: the scheduler drops those positions and finishes its requests."""
        logger.error("step failed; finishing its %d requests with an error", len(plan.sequences), exc_info=exc)
        reason = FinishReason("error", message=f"{type(exc).__name__}: {exc}")
        outputs = []
        for request in self.scheduler.fail(plan, reason):
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
