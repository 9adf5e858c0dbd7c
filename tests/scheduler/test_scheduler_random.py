"""Randomised workload: arrivals over time, shared prefixes, tiny pool, retraction, aborts, stop ids,
failed steps, short aging periods and a small match window.

Every request's output must equal the same request run alone, and the KV accounting identity
must hold after every step. A failed step leaves garbage in its slots: a request that is not
failed with it and still matches its isolated run proves no unwritten K/V reached the cache. With ``overlap`` the harness resolves each step one step late, as the
engine's overlap loop does, so decodes run on in-flight tokens and requests finish, get retracted
or aborted while a step that planned them is unresolved.
"""

from __future__ import annotations

import random

import pytest

from tests.scheduler.harness import Harness
from tests.scheduler.kv_oracle import VOCAB, reference_output


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("policy", ["lpm", "fcfs", "dfs-weight"])
def test_random_workload_matches_isolated_runs(seed, policy, overlap, monkeypatch):
    from radixserve.scheduler import policy as policies

    rng = random.Random(seed)
    # a match window of 2 and short aging periods: waiting tiers, the unordered rest of the queue
    # and hints resumed across evictions, all under the oracle
    monkeypatch.setattr(policies, "MATCH_WINDOW", rng.choice([2, policies.MATCH_WINDOW]))
    h = Harness(
        aging_steps=rng.choice([2, 8, 256]),
        pool_size=rng.choice([40, 64, 128]),
        chunked_prefill_size=rng.choice([3, 8, 64]),
        max_running_requests=rng.choice([2, 4, 16]),
        schedule_policy=policy,
        new_token_ratio=rng.choice([0.0, 0.3]),
        mixed_chunk=seed % 2 == 0,  # odd seeds: prefill chunks in steps of their own
        overlap=overlap,
    )
    bases = [[rng.randrange(5) for _ in range(rng.randrange(1, 16))] for _ in range(3)]
    expected, aborted = {}, set()
    for i in range(40):
        prompt = rng.choice(bases) + [rng.randrange(5) for _ in range(rng.randrange(0, 6))]
        max_new = rng.choice([0, *range(1, 10)])
        stop_ids = (rng.randrange(VOCAB),) if rng.random() < 0.3 else ()
        h.add(f"r{i}", prompt, max_new_tokens=max_new, stop_ids=stop_ids)
        expected[f"r{i}"] = reference_output(prompt, max_new, stop_ids)
        for _ in range(rng.randrange(0, 3)):
            if h.has_work:
                h.step(fail=rng.random() < 0.04)
        if rng.random() < 0.1 and h.scheduler.running:
            victim = rng.choice(h.scheduler.running).request_id
            h.scheduler.abort(victim)
            aborted.add(victim)
            h.scheduler.check_invariants()
    h.run()
    for request_id, output in expected.items():
        if request_id not in aborted and request_id not in h.failed:
            assert h.finished[request_id].output_ids == output, request_id
    h.assert_idle_accounting()
    assert h.scheduler.num_unresolved == 0
