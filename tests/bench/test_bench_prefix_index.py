"""The best-possible hit rate of a workload, against a brute-force reference."""

from __future__ import annotations

import random

from bench.harness import workloads
from bench.harness.prefix_index import (
    PrefixIndex,
    common_prefix_len,
    max_hit_tokens,
    max_hit_tokens_timed,
    prefix_hits,
)


def _naive_lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_common_prefix_len():
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len((1, 2, 3), (1, 2, 4)) == 2
    assert common_prefix_len((1, 2), (1, 2, 3)) == 2
    assert common_prefix_len((5,), (4,)) == 0


def test_longest_prefix_matches_brute_force():
    rng = random.Random(0)
    index, stored = PrefixIndex(), []
    for _ in range(300):
        seq = [rng.randrange(3) for _ in range(rng.randrange(1, 8))]
        expected = max((_naive_lcp(seq, s) for s in stored), default=0)
        assert index.longest_prefix(seq) == expected
        index.insert(seq)
        stored.append(seq)


def test_hits_are_capped_below_the_prompt_length():
    assert prefix_hits([[1, 2, 3], [1, 2, 3], [1, 2], [1, 2, 3, 4]]) == [0, 2, 1, 3]


def test_shared_prefix_maximum_is_every_repeat_of_a_system_prompt():
    requests = workloads.shared_prefix(4, 5, system_len=20, question_len=6, output_len=1, vocab_size=10**6, seed=0)
    # 1e6-token vocabulary: questions practically never share a first token
    assert max_hit_tokens(r.prompt_ids for r in requests) == 4 * 4 * 20


def test_offline_maximum_does_not_depend_on_order():
    requests = workloads.shared_prefix(3, 4, 8, 3, 1, vocab_size=4, seed=2)
    prompts = [r.prompt_ids for r in requests]
    assert max_hit_tokens(prompts) == max_hit_tokens(list(reversed(prompts)))


def test_timed_maximum_counts_outputs_only_after_they_finish():
    doc = [9, 8, 7, 6]
    first = (0.0, 1.0, doc + [1], [50, 51])
    follow_up = doc + [1, 50, 51, 2]
    # sent after the first finished: its prompt and the reply are reusable
    assert max_hit_tokens_timed([first, (2.0, 3.0, follow_up, [60])]) == 7
    # sent before the first finished: only the first prompt is
    assert max_hit_tokens_timed([first, (0.5, 3.0, follow_up, [60])]) == 5
