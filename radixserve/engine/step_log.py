"""SGLang-style batch log lines: one per prefill batch, one every ``decode_interval`` decode batches.

Prefill batch. #new-seq: 3, #new-token: 812, #cached-token: 1536, token usage: 0.12, #running-req: 5, #queue-req: 0
Decode batch. #running-req: 5, #token: 2410, token usage: 0.15, gen throughput (token/s): 210.4, #queue-req: 0, step ms: 23.8, device wait ms: 17.9, schedule ms: 1.1, launch ms: 3.2, apply ms: 1.4, gc ms: 0.2

``step ms``: wall time per step since the last decode line; ``device wait ms``: of it, the time the
loop spent blocked on the device's result (the rest is host work the device did not hide). A wait
near zero means the device idled for the host: the step was host-bound. The host work, per step:
``schedule ms`` (the scheduler's plan), ``launch ms`` (indices, attention plans, queueing the
model's kernels and the sampling) and ``apply ms`` (after the wait: scheduler update, grammars,
detokenizing, outputs); whatever the four leave of ``step ms`` is the loop's other work (admitting
compiled grammars). ``gc ms``: the cyclic garbage collector's time per step, in this process,
inside whichever phase triggered it (large batches allocate enough per step to trigger it often).
"""

from __future__ import annotations

import gc
import logging
import time

from radixserve.core.plan import StepPlan

logger = logging.getLogger("radixserve.engine")

HOST_PHASES = ("schedule", "launch", "apply")


class _CollectorClock:
    """Seconds the cyclic garbage collector has run in this process (a ``gc.callbacks`` entry,
    installed once)."""

    seconds = 0.0
    _started: float | None = None

    @classmethod
    def callback(cls, phase: str, info: dict) -> None:
        if phase == "start":
            cls._started = time.perf_counter()
        elif cls._started is not None:  # a stop without its start (installed mid-collection): skipped
            cls.seconds += time.perf_counter() - cls._started
            cls._started = None


if _CollectorClock.callback not in gc.callbacks:
    gc.callbacks.append(_CollectorClock.callback)


def collector_seconds() -> float:
    """Seconds the cyclic garbage collector has run in this process since this module loaded."""
    return _CollectorClock.seconds


class StepLog:
    def __init__(self, decode_interval: int = 40):
        self.decode_interval = decode_interval
        self._decode_steps = 0
        self._decode_tokens = 0
        self._since = time.perf_counter()
        self._steps = 0  # every step since the last decode line, and the time spent waiting on them
        self._waited = 0.0
        self._host = dict.fromkeys(HOST_PHASES, 0.0)  # seconds per host phase since the last decode line
        self._gc_mark = collector_seconds()

    def host(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` of host work to ``phase`` (one of ``HOST_PHASES``)."""
        self._host[phase] += seconds

    def record(self, plan: StepPlan, scheduler, admitted: list[int], waited: float = 0.0) -> None:
        """Log a resolved step. ``admitted``: the prefix-hit lengths of the requests it admitted
        (taken at launch: with the overlap schedule the scheduler has moved on by now); ``waited``:
        seconds the loop blocked on the step's result."""
        self._steps += 1
        self._waited += waited
        decode_tokens = sum(1 for s in plan.sequences if len(s.input_ids) == 1 and _has_output(s))
        prefill_tokens = plan.num_tokens - decode_tokens
        self._decode_tokens += decode_tokens
        if prefill_tokens:
            self._log_prefill(scheduler, prefill_tokens, admitted)
            return
        self._decode_steps += 1
        if self._decode_steps % self.decode_interval == 0:
            self._log_decode(scheduler)

    def _usage(self, scheduler) -> tuple[int, float]:
        acct = scheduler.cache.accounting()
        used = acct["protected"]
        return used, used / acct["pool_size"]

    def _log_prefill(self, scheduler, prefill_tokens: int, admitted: list[int]) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        cached = sum(admitted)
        _, usage = self._usage(scheduler)
        logger.info(
            "Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
            "#running-req: %d, #queue-req: %d",
            len(admitted),
            prefill_tokens,
            cached,
            usage,
            len(scheduler.running),
            len(scheduler.waiting),
        )

    def _log_decode(self, scheduler) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._since, 1e-9)
        throughput = self._decode_tokens / elapsed
        step_ms, wait_ms = 1e3 * elapsed / self._steps, 1e3 * self._waited / self._steps
        host_ms = [1e3 * self._host[phase] / self._steps for phase in HOST_PHASES]
        gc_ms = 1e3 * (collector_seconds() - self._gc_mark) / self._steps
        self._since, self._decode_tokens, self._steps, self._waited = now, 0, 0, 0.0
        self._host = dict.fromkeys(HOST_PHASES, 0.0)
        self._gc_mark = collector_seconds()
        if not logger.isEnabledFor(logging.INFO):
            return
        used, usage = self._usage(scheduler)
        logger.info(
            "Decode batch. #running-req: %d, #token: %d, token usage: %.2f, gen throughput (token/s): %.1f, "
            "#queue-req: %d, step ms: %.1f, device wait ms: %.1f, schedule ms: %.1f, launch ms: %.1f, apply ms: %.1f"
            ", gc ms: %.1f",
            len(scheduler.running),
            used,
            usage,
            throughput,
            len(scheduler.waiting),
            step_ms,
            wait_ms,
            *host_ms,
            gc_ms,
        )


def _has_output(sequence) -> bool:
    """A one-token step of a request with output is a decode; of one without, a prompt's last token
    (an extend over a prefix hit that covers all but one prompt token)."""
    return (sequence.num_output if sequence.num_output is not None else len(sequence.output_ids)) > 0
