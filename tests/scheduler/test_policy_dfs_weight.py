"""dfs-weight stories: groups by shared prefix, cached or not, and a KV pool too small for every
prefix (bench.prefix_reuse ``--runs policies`` in miniature). A hit before an earlier cold
request, for every policy: tests/scheduler/test_scheduler.py."""

from __future__ import annotations

import random

import pytest

from tests.scheduler.harness import Harness
from tests.scheduler.kv_oracle import reference_output


def test_dfs_weight_admits_the_heaviest_uncached_group_first_and_computes_its_prefix_once():
    # Nothing is cached; the pool holds one 31-token prompt (and its 1 new token) at a time.
    h = Harness(pool_size=40, schedule_policy="dfs-weight")
    h.add("x", [7] * 30 + [1], max_new_tokens=1)
    for i in range(3):
        h.add(f"y{i}", [8] * 30 + [i], max_new_tokens=1)
    assert [s.request_id for s in h.step().sequences] == ["y0"]
    h.run()
    assert [h.finished[f"y{i}"].num_cached_tokens for i in range(3)] == [0, 30, 30]
    assert h.finished["x"].num_cached_tokens == 0
    h.assert_idle_accounting()


def _shared_prefix_workload(rng: random.Random, num_groups: int, per_group: int, system_len: int):
    prompts = []
    for group in range(num_groups):
        system = [rng.randrange(1000) for _ in range(system_len)]
        prompts += [(group, system + [rng.randrange(1000) for _ in range(4)]) for _ in range(per_group)]
    rng.shuffle(prompts)
    return prompts


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
@pytest.mark.parametrize("per_group, aging_steps", [(6, 256), (20, 8)])
def test_a_pool_holding_three_prefixes_computes_each_of_eight_once(policy, per_group, aging_steps):
    """8 groups x 6 prompts, a 40-token system prompt each, shuffled; the pool holds 3 system prompts.

    A cache-aware policy admits the requests that hit a cached prefix before opening another group,
    so each system prompt is computed once: every request but the first of its group hits all 40.
    Also with 20 a group: a queue of 160, longer than lpm's old FCFS fallback (128), whose run
    lasts many times ``aging_steps``, so the batch ages as one (its cache-aware order must hold)."""
    prompts = _shared_prefix_workload(random.Random(0), num_groups=8, per_group=per_group, system_len=40)
    h = Harness(pool_size=120, schedule_policy=policy, aging_steps=aging_steps)
    requests = {f"r{i}": h.add(f"r{i}", prompt, max_new_tokens=4) for i, (_, prompt) in enumerate(prompts)}
    h.run()
    hits: dict[int, list[int]] = {}
    for (group, _), request in zip(prompts, requests.values(), strict=True):
        hits.setdefault(group, []).append(request.num_cached_tokens)
        assert h.finished[request.request_id].output_ids == reference_output(request.prompt_ids, 4)
    # (two questions of a group may share their first token too: a hit of 41)
    computed_once = {group: [min(hit, 40) for hit in sorted(group_hits)] for group, group_hits in hits.items()}
    assert computed_once == {g: [0] + [40] * (per_group - 1) for g in range(8)}
    assert h.scheduler.step_count > 4 * aging_steps or per_group == 6
    h.assert_idle_accounting()
