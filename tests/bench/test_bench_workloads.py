"""The benchmark workloads have the shapes their docs promise (no model, no torch)."""

from __future__ import annotations

from bench.harness import workloads
from bench.harness.conversations import background_traffic, rag_plan


def test_sharegpt_lengths_have_the_documented_means_and_bounds():
    lengths = workloads.sharegpt_lengths(1000, seed=0)
    inputs = [i for i, _ in lengths]
    outputs = [o for _, o in lengths]
    assert 195 <= sum(inputs) / 1000 <= 235
    assert 185 <= sum(outputs) / 1000 <= 215
    assert min(inputs) >= 4 and max(inputs) <= 2048
    assert min(outputs) >= 4 and max(outputs) <= 1024
    assert max(inputs) > 1000  # the long tail is there
    assert lengths == workloads.sharegpt_lengths(1000, seed=0)


def test_sharegpt_requests_match_their_lengths_and_vocab():
    requests = workloads.sharegpt(50, vocab_size=100, seed=3, length_scale=0.25)
    assert [(r.prompt_len, r.output_len) for r in requests] == workloads.sharegpt_lengths(50, 3, 0.25)
    assert all(0 <= t < 100 for r in requests for t in r.prompt_ids)


def test_shared_prefix_groups_share_exactly_their_system_prompt():
    requests = workloads.shared_prefix(3, 4, system_len=10, question_len=5, output_len=7, vocab_size=50000, seed=1)
    assert len(requests) == 12
    assert {r.prompt_len for r in requests} == {15} and {r.output_len for r in requests} == {7}
    by_group: dict[int, list] = {}
    for request in requests:
        by_group.setdefault(request.group, []).append(request.prompt_ids)
    assert sorted(len(v) for v in by_group.values()) == [4, 4, 4]
    for prompts in by_group.values():
        assert len({tuple(p[:10]) for p in prompts}) == 1
        assert len({tuple(p[10:]) for p in prompts}) == 4
    assert [r.group for r in requests] != sorted(r.group for r in requests)  # shuffled


def test_shared_fraction_keeps_the_total_length():
    for fraction, system_len in ((0.0, 0), (0.5, 50), (0.9, 90)):
        requests = workloads.shared_fraction(2, 2, 100, fraction, 4, vocab_size=1000, seed=0)
        assert {r.prompt_len for r in requests} == {100}
        same = [r for r in requests if r.group == requests[0].group]
        assert same[0].prompt_ids[:system_len] == same[1].prompt_ids[:system_len]


def test_rag_plan_users_turns_and_prompts():
    plan = rag_plan(3, 100, (2, 4), (3, 5), 8, 6, 5, user_rate=2.0, think_mean=1.0, vocab_size=1000, seed=0)
    assert len(plan.documents) == 3 and all(90 <= len(d) <= 110 for d in plan.documents)
    per_doc = [sum(u.doc == d for u in plan.users) for d in range(3)]
    assert all(2 <= n <= 4 for n in per_doc)
    assert all(3 <= len(u.questions) <= 5 and len(u.think_times) == len(u.questions) for u in plan.users)
    starts = [u.start for u in plan.users]
    assert starts == sorted(starts) and starts[0] == 0.0
    user = plan.users[0]
    prompt = plan.prompt(user, [1, 2, 3], 1)
    assert prompt == plan.system + plan.documents[user.doc] + [1, 2, 3] + user.questions[1]


def test_background_traffic_arrives_over_time_and_shares_nothing():
    plan = rag_plan(2, 200, (2, 2), (2, 2), 16, 6, 5, user_rate=2.0, think_mean=1.0, vocab_size=30000, seed=0)
    background = background_traffic(rate=4.0, count=200, prompt_len=100, vocab_size=30000, seed=0)
    assert len(background) == 200 and background == background_traffic(4.0, 200, 100, 30000, 0)
    starts = [request.start for request in background]
    assert starts == sorted(starts) and starts[0] > 0
    assert 35 < starts[-1] < 65  # 200 arrivals at 4/s: ~50 s
    assert all(50 <= len(request.prompt) <= 150 for request in background)
    heads = {tuple(d[:8]) for d in [plan.system, *plan.documents]}
    assert not any(tuple(request.prompt[:8]) in heads for request in background)
    assert background_traffic(0.0, 10, 100, 30000, 0) == [] == background_traffic(4.0, 0, 100, 30000, 0)
