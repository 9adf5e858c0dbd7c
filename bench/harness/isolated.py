"""Run a function in a fresh child process and return its result.

Every engine, the Hugging Face baseline and the device measurement run this way: when the child
exits, all of its device memory (KV pool, CUDA graphs, caching allocator) is gone, so the next one
sizes its KV pool against an empty card.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

_LOG_STEPS_ENV = "RADIXSERVE_BENCH_LOG_STEPS"
_DUMP_ENV = "RADIXSERVE_BENCH_STACK_DUMP_AFTER"
_DUMP_AT_ENV = "RADIXSERVE_BENCH_STACK_DUMP_AT"  # the bench's own dump, as time.time()


def log_engine_steps() -> None:
    """Print the engine's batch log (``--log-steps``) here and in every child started after."""
    os.environ[_LOG_STEPS_ENV] = "1"
    _configure_step_log()


def dump_stacks_after(seconds: float) -> None:
    """Print every thread's Python stack to stderr once ``seconds`` have passed (``--stack-dump-after``),
    here and in every child started after, and (``server_dump_delay``) in the servers the bench
    starts, at the same moment: where a run that never finishes is stuck."""
    os.environ[_DUMP_ENV] = str(seconds)
    os.environ[_DUMP_AT_ENV] = str(time.time() + seconds)
    _arm_stack_dump()


def server_dump_delay() -> float | None:
    """Seconds until the bench's own stack dump (``--stack-dump-after``); None without one or once
    it is past."""
    at = os.environ.get(_DUMP_AT_ENV)
    delay = float(at) - time.time() if at else None
    return delay if delay is not None and delay > 0 else None


def _arm_stack_dump() -> None:
    seconds = os.environ.get(_DUMP_ENV)
    if seconds:
        faulthandler.dump_traceback_later(float(seconds), file=sys.stderr)


def _child_setup() -> None:
    _configure_step_log()
    _log_one_row_tuning()
    _arm_stack_dump()


def _log_one_row_tuning() -> None:
    """The startup timing's one line per projection shape (which form a batch-1 step uses)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(relativeCreated)9.0f ms] %(message)s"))
    tuning_log = logging.getLogger("radixserve.model.linear_tuning")
    tuning_log.setLevel(logging.INFO)
    tuning_log.addHandler(handler)


def _configure_step_log() -> None:
    if os.environ.get(_LOG_STEPS_ENV) != "1":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(relativeCreated)9.0f ms] %(message)s"))
    engine_log = logging.getLogger("radixserve.engine")
    engine_log.setLevel(logging.INFO)
    engine_log.addHandler(handler)


def run_isolated(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a spawned child; ``fn`` must be importable (module level)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"), initializer=_child_setup) as pool:
        return pool.submit(fn, *args, **kwargs).result()
