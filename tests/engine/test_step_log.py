"""The batch log's clock of the cyclic garbage collector (``gc ms`` on decode lines)."""

from __future__ import annotations

import gc
import logging

from radixserve.cache.prefix_cache import PrefixCache
from radixserve.config import SchedulerConfig
from radixserve.core.plan import SequencePlan, StepPlan
from radixserve.core.sampling_params import SamplingParams
from radixserve.engine.step_log import StepLog, _CollectorClock
from radixserve.scheduler.scheduler import Scheduler


def _decode_plan() -> StepPlan:
    sequence = SequencePlan(
        request_id="r",
        input_ids=[5],
        prefix_len=3,
        slots=[1, 2, 3, 4],
        sample=True,
        sampling=SamplingParams(max_new_tokens=8),
        output_ids=[7],
    )
    return StepPlan([sequence])


def test_the_collector_clock_counts_a_full_collection():
    before = _CollectorClock.seconds
    gc.collect()
    assert _CollectorClock.seconds > before
    assert gc.callbacks.count(_CollectorClock.callback) == 1  # installed once


def test_a_decode_line_reports_the_collections_of_its_steps(caplog):
    scheduler = Scheduler(SchedulerConfig(context_length=64), PrefixCache(32))
    log = StepLog(decode_interval=2)
    with caplog.at_level(logging.INFO, logger="radixserve.engine"):
        log.record(_decode_plan(), scheduler, [])
        garbage = [[i] for i in range(200_000)]  # containers for the collector to walk
        gc.collect()
        del garbage
        log.record(_decode_plan(), scheduler, [])
        log.record(_decode_plan(), scheduler, [])
        log.record(_decode_plan(), scheduler, [])  # no collection in this line's steps
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Decode batch.")]
    gc_ms = [float(line.rsplit("gc ms: ", 1)[1]) for line in lines]
    assert len(gc_ms) == 2 and gc_ms[0] > 0.5 and gc_ms[1] < gc_ms[0], lines


def test_a_stop_without_its_start_adds_nothing():
    """A callback installed during a collection sees its stop alone: no time from an unset start."""
    gc.collect()  # any start is paired
    before = _CollectorClock.seconds
    _CollectorClock.callback("stop", {})
    assert _CollectorClock.seconds == before
