"""Overlap schedule stories: the scheduler plans step N+1 while step N's tokens are still in flight."""

from __future__ import annotations

from radixserve.core.plan import FUTURE_TOKEN
from tests.scheduler.harness import Harness
from tests.scheduler.kv_oracle import reference_output


def test_a_decode_on_an_in_flight_token_gets_a_placeholder_and_stops_at_max_new_tokens():
    h = Harness(overlap=True)
    a = h.add("a", [1, 2, 3], max_new_tokens=2)
    prefill = h.step()  # launched, not resolved
    assert prefill.sequences[0].sample and a.num_inflight == 1 and a.output_ids == []
    decode = h.step()  # the prefill resolves only after this decode is launched
    seq = decode.sequences[0]
    assert (seq.input_ids, seq.prefix_len, seq.num_output) == ([FUTURE_TOKEN], 3, 1)
    assert len(a.output_ids) == 1 and a.num_inflight == 1
    # Both tokens are sampled: nothing more is planned, the last step only resolves.
    assert not h.step()
    assert a.num_inflight == 0 and h.finished["a"].output_ids == reference_output([1, 2, 3], 2)
    assert h.scheduler.num_unresolved == 0
    h.assert_idle_accounting()


def test_a_request_stopping_with_a_token_in_flight_drops_it_and_caches_only_written_kv():
    prompt = [4, 4, 2]
    first = reference_output(prompt, 1)[0]
    h = Harness(overlap=True)
    h.add("a", prompt, max_new_tokens=8, stop_ids=(first,))
    h.step()
    h.step()  # a decode on the stop token is launched before the stop is seen
    assert h.finished["a"].output_ids == [first]
    # Position 3 (the stop token) was being computed by the unresolved decode: not in the tree.
    assert h.cache.tree.evictable_size == len(prompt)
    h.run()
    h.assert_idle_accounting()


def test_a_request_retracted_with_a_token_in_flight_keeps_it_and_waits_for_it():
    h = Harness(pool_size=24, new_token_ratio=0.0, overlap=True)
    prompts = {"a": [1, 2, 3, 4, 5, 6], "b": [9, 8, 7, 6, 5, 4], "c": [3, 3, 3, 3, 3, 3]}
    for request_id, prompt in prompts.items():
        h.add(request_id, prompt, max_new_tokens=8)
    requests = list(h.scheduler.waiting)
    kept_while_waiting = False
    while h.has_work:
        before = {r.request_id: len(r.output_ids) for r in requests}
        h.step()  # retraction happens at schedule, the token it had in flight arrives at resolve
        kept_while_waiting |= any(len(r.output_ids) > before[r.request_id] for r in h.scheduler.waiting)
    assert kept_while_waiting and h.scheduler.num_retractions > 0
    for request_id, prompt in prompts.items():
        assert h.finished[request_id].output_ids == reference_output(prompt, 8)
    h.assert_idle_accounting()


def test_a_failed_step_takes_its_in_flight_successor_down_with_it_and_leaks_nothing():
    h = Harness(overlap=True)
    h.add("a", [1, 2, 3, 4], max_new_tokens=5)
    h.step(fail=True)  # the prefill dies on the device
    h.step()  # the decode on its (garbage) token was launched already
    h.run()
    assert h.failed["a"].finish_reason.kind == "error" and "a" not in h.finished
    assert h.cache.tree.evictable_size == 0  # nothing it computed reached the cache
    h.add("b", [1, 2, 3, 4], max_new_tokens=5)
    h.run()
    assert h.finished["b"].output_ids == reference_output([1, 2, 3, 4], 5)
    h.assert_idle_accounting()
