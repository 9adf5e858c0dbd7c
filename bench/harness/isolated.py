"""Run a function in a fresh child process and return its result.

Every engine, the Hugging Face baseline and the device measurement run this way: when the child
exits, all of its device memory (KV pool, CUDA graphs, caching allocator) is gone, so the next one
sizes its KV pool against an empty card.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor


def run_isolated(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a spawned child; ``fn`` must be importable (module level)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()
