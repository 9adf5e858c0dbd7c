"""Scheduler stories: prefix hits, chunked prefill, in-batch dedup, retraction, rejection, policies."""

from __future__ import annotations

import pytest

from radixserve.core.request import Request
from radixserve.core.sampling_params import InvalidParamError
from tests.scheduler.harness import Harness
from tests.scheduler.kv_oracle import reference_output


def test_second_request_computes_only_the_uncached_suffix():
    h = Harness(pool_size=64)
    h.add("a", list(range(10)), max_new_tokens=3)
    h.run()
    before = h.oracle.num_tokens_computed
    b = h.add("b", list(range(8)) + [40, 41, 42], max_new_tokens=3)
    h.step()
    first = h.plans[-1].sequences[0]
    assert (first.prefix_len, first.input_ids) == (8, [40, 41, 42])
    h.run()
    assert b.num_cached_tokens == 8
    # 3 new prompt tokens, then 2 decode steps (the third token needs no KV).
    assert h.oracle.num_tokens_computed - before == 3 + 2
    assert h.finished["b"].output_ids == reference_output(b.prompt_ids, 3)
    h.assert_idle_accounting()


def test_identical_prompt_hit_is_capped_at_len_minus_one():
    h = Harness()
    h.add("a", [1, 2, 3, 4, 5], max_new_tokens=2)
    h.run()
    b = h.add("b", [1, 2, 3, 4, 5], max_new_tokens=2)
    h.step()
    assert b.num_cached_tokens == 4
    assert h.plans[-1].sequences[0].input_ids == [5]
    h.run()
    assert h.finished["b"].output_ids == h.finished["a"].output_ids


def test_chunked_prefill_splits_a_long_prompt_and_samples_once():
    h = Harness(chunked_prefill_size=4)
    h.add("a", list(range(10)), max_new_tokens=2)
    h.run()
    chunks = [(p.sequences[0].prefix_len, len(p.sequences[0].input_ids), p.sequences[0].sample) for p in h.plans]
    assert chunks == [(0, 4, False), (4, 4, False), (8, 2, True), (10, 1, True)]
    assert h.finished["a"].output_ids == reference_output(list(range(10)), 2)


def test_decode_runs_alongside_a_prefill_chunk():
    h = Harness(chunked_prefill_size=4)
    h.add("short", [7, 8], max_new_tokens=5)
    h.step()
    h.add("long", list(range(20, 30)), max_new_tokens=1)
    plan = h.step()
    assert [(s.request_id, len(s.input_ids)) for s in plan.sequences] == [("short", 1), ("long", 3)]
    h.run()
    assert h.finished["short"].output_ids == reference_output([7, 8], 5)
    assert h.finished["long"].output_ids == reference_output(list(range(20, 30)), 1)


def test_without_mixed_chunks_prefill_and_decode_steps_alternate():
    h = Harness(chunked_prefill_size=4, mixed_chunk=False)
    h.add("short", [7, 8], max_new_tokens=6)
    h.step()  # its prefill
    h.step()  # a decode
    h.add("long", list(range(20, 30)), max_new_tokens=1)
    h.run()
    steps = [[(s.request_id, len(s.input_ids)) for s in plan.sequences] for plan in h.plans if plan]
    # the 10-token prompt in three chunk steps of its own (4 + 4 + 2), "short" decoding in between
    assert steps[:7] == [
        [("short", 2)], [("short", 1)], [("long", 4)], [("short", 1)], [("long", 4)], [("short", 1)], [("long", 2)]
    ]  # fmt: skip
    assert h.finished["short"].output_ids == reference_output([7, 8], 6)
    assert h.finished["long"].output_ids == reference_output(list(range(20, 30)), 1)


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_without_mixed_chunks_an_arrival_every_step_does_not_stall_decodes(overlap):
    h = Harness(pool_size=4096, chunked_prefill_size=64, max_running_requests=256, mixed_chunk=False, overlap=overlap)
    h.add("decoding", [1, 2, 3], max_new_tokens=20)
    for i in range(40):
        h.add(f"arrival{i}", [9, i % 5, 4, 4, 2], max_new_tokens=30)
        h.step()
    decode_steps = [n for n, plan in enumerate(h.plans) if any(s.request_id == "decoding" for s in plan.sequences)]
    assert len(decode_steps) >= 19  # its prefill, then a decode at least every other step
    assert max(b - a for a, b in zip(decode_steps, decode_steps[1:])) <= 2


def test_requests_sharing_an_uncached_prefix_compute_it_once():
    h = Harness()
    shared = list(range(40))
    for i in range(3):
        h.add(f"r{i}", shared + [100 + i], max_new_tokens=2)
    first = h.step()
    assert [s.request_id for s in first.sequences] == ["r0"]
    h.run()
    assert [h.finished[f"r{i}"].num_cached_tokens for i in range(3)] == [0, 40, 40]
    assert h.oracle.num_tokens_computed == 41 + 1 + 2 * (1 + 1)


def test_retraction_when_decode_runs_out_of_kv_keeps_greedy_output():
    h = Harness(pool_size=24, new_token_ratio=0.0)
    prompts = {"a": [1, 2, 3, 4, 5, 6], "b": [9, 8, 7, 6, 5, 4], "c": [3, 3, 3, 3, 3, 3]}
    for request_id, prompt in prompts.items():
        h.add(request_id, prompt, max_new_tokens=8)
    h.run()
    assert h.scheduler.num_retractions > 0
    for request_id, prompt in prompts.items():
        assert h.finished[request_id].output_ids == reference_output(prompt, 8)
    h.assert_idle_accounting()


def test_request_that_can_never_fit_is_rejected_at_once():
    h = Harness(pool_size=16, context_length=32)
    with pytest.raises(InvalidParamError) as err:
        h.add("too-long-for-context", list(range(30)), max_new_tokens=5)
    assert err.value.param == "max_new_tokens" and "maximum context length is 32" in str(err.value)
    with pytest.raises(InvalidParamError, match="pool holds 16"):
        h.add("too-big-for-pool", list(range(10)), max_new_tokens=10)
    with pytest.raises(InvalidParamError) as err:
        h.add("prompt-alone-too-long", list(range(40)), max_new_tokens=1)
    assert err.value.param == "prompt"
    assert not h.scheduler.has_work


def _first_of_cold_then_hit(**harness_args) -> tuple[Harness, str]:
    """A 30-token prompt is cached; a cold request arrives, then one that hits the cache."""
    h = Harness(max_running_requests=1, **harness_args)
    h.add("warm", list(range(30)), max_new_tokens=1)
    h.run()
    h.add("cold", [90, 91, 92, 93], max_new_tokens=1)
    h.add("hit", list(range(30)) + [5], max_new_tokens=1)
    return h, [s.request_id for s in h.step().sequences][0]


@pytest.mark.parametrize("policy, first", [("lpm", "hit"), ("dfs-weight", "hit"), ("fcfs", "cold")])
def test_cache_aware_policies_admit_a_hit_before_an_earlier_cold_request(policy, first):
    h, admitted = _first_of_cold_then_hit(schedule_policy=policy, aging_steps=1000)
    assert admitted == first
    h.run()
    assert h.finished["hit"].num_cached_tokens == 30


def test_aging_prevents_starvation_under_lpm():
    _, admitted = _first_of_cold_then_hit(aging_steps=0)
    assert admitted == "cold"


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
def test_a_cold_request_goes_before_hits_that_arrive_an_aging_period_after_it(policy):
    """One request at a time; a hit arrives every step. The cold one waits out ``aging_steps`` and
    then goes before every later arrival, however well they hit."""
    h = Harness(max_running_requests=1, schedule_policy=policy, aging_steps=8)
    h.add("warm", list(range(30)), max_new_tokens=1)
    h.run()
    cold = h.add("cold", [90, 91, 92, 93], max_new_tokens=1)
    for i in range(40):
        h.add(f"hit{i}", list(range(30)) + [100 + i], max_new_tokens=1)
        h.step()
        if cold.admitted:
            break
    # hits that arrived in its tier went first, until it was 8 steps older than any newcomer
    assert cold.admitted and 1 <= i < 10, i


def test_waiting_tiers_keep_a_batch_in_cache_aware_order_and_put_older_arrivals_first():
    """Tiers of ``aging_steps``: requests that arrived together keep lpm's order however long they
    wait; one that arrived a tier earlier goes before them with no hit at all, one a tier later after."""
    from radixserve.core.sampling_params import SamplingParams
    from radixserve.scheduler.policy import Candidate, order

    def candidate(name: str, arrival: int, match_len: int) -> Candidate:
        return Candidate(Request(name, [1], SamplingParams(), arrival_step=arrival), match_len)

    batch = [candidate(f"b{i}", 100, match) for i, match in enumerate([0, 40, 10, 40])]
    early, late = candidate("early", 89, 0), candidate("late", 111, 50)
    for now in (105, 1_000, 10_000):  # the batch aged once, and a hundred times over
        names = [c.request.request_id for c in order("lpm", [late, *batch, early], now, aging_steps=10)]
        assert names == ["early", "b1", "b3", "b2", "b0", "late"], (now, names)


def _cold_queue_then_a_hit(num_cold: int) -> Harness:
    """One request at a time; a 30-token prompt cached, then ``num_cold`` cold requests queued
    before one ("hit") that extends the cached prompt."""
    h = Harness(max_running_requests=1)
    h.add("warm", list(range(30)), max_new_tokens=1)
    h.run()
    for i in range(num_cold):
        h.add(f"cold{i}", [1000 + i, 7, 7], max_new_tokens=1)
    h.add("hit", list(range(30)) + [5], max_new_tokens=1)
    return h


def test_lpm_orders_a_queue_much_longer_than_128():
    """300 cold requests arrive before one that hits the cache: lpm admits the hit first (a queue
    past 128 used to fall back to arrival order)."""
    h = _cold_queue_then_a_hit(300)
    assert [s.request_id for s in h.step().sequences] == ["hit"]


def test_requests_past_the_match_window_follow_in_arrival_order(monkeypatch):
    """Only the ``MATCH_WINDOW`` longest-waiting requests are looked up and ordered by lpm: a hit
    beyond it waits behind the window until the queue shrinks to let it in, then goes first."""
    from radixserve.scheduler import policy

    monkeypatch.setattr(policy, "MATCH_WINDOW", 2)
    h = _cold_queue_then_a_hit(3)
    admitted = []
    while h.scheduler.has_work:
        admitted += [s.request_id for s in h.step().sequences if s.prefix_len == 0 or s.request_id == "hit"]
    assert admitted[:4] == ["cold0", "cold1", "hit", "cold2"]
    assert h.finished["hit"].num_cached_tokens == 30
    monkeypatch.setattr(policy, "MATCH_WINDOW", 8)
    h.add("cold3", [2000, 7, 7], max_new_tokens=1)
    h.add("hit2", list(range(30)) + [6], max_new_tokens=1)
    assert [s.request_id for s in h.step().sequences] == ["hit2"]


def test_a_prefix_a_waiting_request_needs_outlives_a_newer_one_nobody_needs():
    """While a request waits (the running limit is reached), eviction under pressure takes the
    cached prompt nobody waits for, though it is newer, and keeps the one the waiting request hits."""
    h = Harness(pool_size=48, max_running_requests=1, new_token_ratio=0.0)
    needed, unneeded = list(range(100, 120)), list(range(200, 212))
    h.add("warm", needed, max_new_tokens=1)
    h.run()
    h.add("other", unneeded, max_new_tokens=1)
    h.run()  # 20 + 12 tokens cached, the 12 more recently used
    h.add("hog", list(range(300, 310)), max_new_tokens=15)
    h.step()  # running alone from now on: its decodes need 15 slots, 6 are free
    waiting = h.add("waiting", needed + [7], max_new_tokens=1)
    h.run()
    assert h.finished["hog"].output_ids and waiting.num_cached_tokens == 20


def test_waiting_prefixes_are_kept_in_queue_order_the_head_s_longest():
    """Four cached prompts, each wanted by one waiting request: after ``touch_waiting`` eviction
    takes the prefix wanted by the request at the back of the queue first, the head's last."""
    from radixserve.cache.prefix_cache import PrefixCache
    from radixserve.core.sampling_params import SamplingParams

    cache = PrefixCache(pool_size=64)
    prompts = [list(range(100 * k, 100 * k + 10)) for k in range(4)]
    slots = {}
    for k, prompt in enumerate(prompts):
        slots[k] = cache.allocator.alloc(10)
        cache.tree.insert(prompt, slots[k])
    order = [2, 0, 3, 1]  # the waiting queue, head first
    waiting = [Request(f"w{k}", prompts[k] + [7], SamplingParams()) for k in order]
    cache.touch_waiting(waiting)
    evicted = [sorted(cache.tree.evict(1)) for _ in order]
    assert evicted == [sorted(slots[k]) for k in reversed(order)]


def test_long_queue_lookups_resume_from_each_request_s_hint():
    """A waiting request's cached prefix is looked up again only as far as the tree grew: while
    nothing is added to the tree, no lookup reads its key."""
    from radixserve.cache.radix_tree import RadixTree

    h = Harness(pool_size=128, max_running_requests=4)
    h.add("warm", list(range(30)), max_new_tokens=1)
    h.run()
    h.add("long", list(range(30)) + [60] * 20, max_new_tokens=30)
    # each needs 80 slots of its own: none fits beside "long", all are looked up every step
    waiting = [h.add(f"w{i}", list(range(30)) + [200 + i] * 80, max_new_tokens=1) for i in range(5)]
    h.step()  # "long" is admitted and prefilled: its prompt goes into the tree
    h.step()  # its first decode step: the waiting requests' hints walk on from the 30-token node
    assert not any(r.admitted for r in waiting)
    hints = [r.prefix_hint for r in waiting]
    assert all(hint is not None and hint.length == 30 for hint in hints)
    keys_read = []
    original = RadixTree.match_len

    def counted(self, key_len, token_ids, extra_key=None, hint=None):
        def read():
            keys_read.append(key_len)
            return token_ids()

        return original(self, key_len, read, extra_key, hint)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RadixTree, "match_len", counted)
        h.step()  # a decode step of "long": nothing new in the tree
    assert keys_read == [] and [r.prefix_hint for r in waiting] == hints
    h.run()  # "long" finishes: its output goes into the tree, and the waiting requests run
    assert all(r.num_cached_tokens == 30 for r in waiting)


def test_dfs_weight_admits_the_heaviest_prefix_group_first():
    h = Harness(max_running_requests=2, schedule_policy="dfs-weight")
    h.add("x", [1] * 10, max_new_tokens=1)
    h.add("y", [2] * 10, max_new_tokens=1)
    h.run()
    h.add("y1", [2] * 10 + [3], max_new_tokens=1)
    h.add("x1", [1] * 10 + [4], max_new_tokens=1)
    h.add("x2", [1] * 10 + [5], max_new_tokens=1)
    assert [s.request_id for s in h.step().sequences] == ["x1", "x2"]


def test_abort_frees_every_slot():
    h = Harness(chunked_prefill_size=4)
    h.add("a", list(range(12)), max_new_tokens=50)
    h.add("b", list(range(12)), max_new_tokens=50)
    for _ in range(5):
        h.step()
    assert h.scheduler.abort("a").finish_reason.kind == "abort"
    assert h.scheduler.abort("b").finish_reason.kind == "abort"
    assert h.scheduler.abort("missing") is None
    h.scheduler.check_invariants()
    h.assert_idle_accounting()


def test_flush_refused_while_running_and_empties_tree_when_idle():
    h = Harness()
    h.add("a", list(range(10)), max_new_tokens=3)
    h.step()
    assert h.cache.flush() is False
    h.run()
    assert h.cache.tree.evictable_size > 0
    assert h.cache.flush() is True
    assert h.cache.accounting()["free"] == h.cache.pool_size


def test_disabled_radix_cache_recomputes_everything():
    h = Harness(disable_radix_cache=True)
    h.add("a", list(range(10)), max_new_tokens=2)
    h.run()
    b = h.add("b", list(range(10)), max_new_tokens=2)
    h.run()
    assert b.num_cached_tokens == 0 and h.cache.tree.evictable_size == 0
    assert h.finished["b"].output_ids == h.finished["a"].output_ids
    h.assert_idle_accounting()


def test_disabled_radix_cache_admits_requests_sharing_a_prefix_together():
    """Waiting for a prefix being prefilled only pays when it will be a hit: without the cache it
    would serialise the admissions of a shared-prefix workload (a slower cache-off baseline)."""
    h = Harness(pool_size=512, disable_radix_cache=True)
    shared = list(range(40))
    for i in range(3):
        h.add(f"r{i}", shared + [100 + i], max_new_tokens=2)
    first = h.step()
    assert [s.request_id for s in first.sequences] == ["r0", "r1", "r2"]
    h.run()
    assert [h.finished[f"r{i}"].num_cached_tokens for i in range(3)] == [0, 0, 0]
    h.assert_idle_accounting()


def test_stop_token_and_min_new_tokens():
    prompt = [4, 4, 4]
    ref = reference_output(prompt, 6)
    h = Harness()
    h.add("a", prompt, max_new_tokens=6, stop_ids=(ref[1],))
    h.add("b", prompt, max_new_tokens=6, stop_ids=(ref[1],), min_new_tokens=2)
    h.run()
    assert h.finished["a"].output_ids == ref[:2]
    assert h.finished["a"].finish_reason.kind == "stop" and h.finished["a"].finish_reason.matched == ref[1]
    # min_new_tokens=2: the stop token as the 2nd token does not end generation (the sampler also masks it).
    later = [i for i in range(2, 6) if ref[i] == ref[1]]
    assert h.finished["b"].output_ids == ref[: later[0] + 1 if later else 6]


def test_max_new_tokens_zero_is_prefill_only():
    h = Harness()
    h.add("warm", list(range(12)), max_new_tokens=0)
    h.run()
    assert h.finished["warm"].output_ids == [] and h.finished["warm"].finish_reason.kind == "length"
    assert h.cache.tree.evictable_size == 12


def test_fcfs_admits_every_request_that_already_hits_a_cached_prefix_in_one_step():
    h = Harness(schedule_policy="fcfs")
    h.add("warm", list(range(40)), max_new_tokens=1)
    h.run()
    for i in range(6):
        h.add(f"r{i}", list(range(40)) + [100 + i], max_new_tokens=1)
    assert len(h.step().sequences) == 6
