"""The overlap schedule end to end: step N+1 is launched before step N's tokens are known.

Two engines on the embedded model, identical but for ``--disable-overlap-schedule``, must agree
token for token (greedy and seeded sampling) on a workload with mixed lengths, prefix hits,
chunked prefill, retraction (a tiny KV pool) and an abort; stop conditions, grammars, penalties,
logprobs and failed steps must behave the same with and without overlap.
"""

from __future__ import annotations

import json
from collections import defaultdict

import jsonschema
import pytest

from radixserve import Engine
from radixserve.core.sampling_params import SamplingParams

TIGHT = {"max_total_tokens": 100, "chunked_prefill_size": 48, "schedule_conservativeness": 0.0}


@pytest.fixture(scope="module")
def engines(default_model_dir):
    return {
        "overlap": Engine(**TIGHT),
        "sync": Engine(disable_overlap_schedule=True, **TIGHT),
    }


def _assert_idle(engine) -> None:
    core = engine.core
    core.check_invariants()
    acct = core.cache.accounting()
    assert acct["protected"] == 0 and acct["free"] + acct["evictable"] == acct["pool_size"]
    assert not core.has_work and core.scheduler.num_unresolved == 0


def _workload(tokenizer) -> list[tuple[str, list[int], dict]]:
    system = tokenizer.encode("You are a terse assistant for a shop that sells tents, stoves and boots. " * 2)
    questions = ["Which tent?", "Is shipping free?", "Any stoves?", "Boots for snow?", "Hours?", "Returns?"]
    jobs = []
    for i, question in enumerate(questions):
        ids = system + tokenizer.encode(f" Q{i}: {question}")
        params = {"max_new_tokens": 4 + 5 * i, "temperature": 0.0}
        if i % 2:
            params = {**params, "temperature": 0.8, "top_p": 0.9, "seed": 100 + i}
        jobs.append((f"q{i}", ids, params))
    jobs.append(("victim", system + tokenizer.encode(" Tell me everything."), {"max_new_tokens": 40}))
    jobs.append(("prefill-only", system + tokenizer.encode(" Hi"), {"max_new_tokens": 0}))
    return jobs


def _drive(engine, jobs, abort_at_step: int) -> tuple[dict, dict]:
    core = engine.core
    for request_id, ids, params in jobs:
        core.add_request(request_id, ids, SamplingParams.from_dict(params))
    tokens, reasons = defaultdict(list), {}
    steps = 0
    while core.has_work:
        outputs = core.step()
        steps += 1
        if steps == abort_at_step:
            outputs.append(core.abort("victim"))
        for output in outputs:
            tokens[output.request_id] += output.new_token_ids
            if output.finished:
                reasons[output.request_id] = output.finish_reason
    return tokens, reasons


def test_overlap_and_sync_agree_token_for_token_through_hits_chunks_retraction_and_aborts(engines):
    results = {}
    for mode, engine in engines.items():
        retractions = engine.core.scheduler.num_retractions
        results[mode] = _drive(engine, _workload(engine.tokenizer), abort_at_step=6)
        assert engine.core.scheduler.num_retractions > retractions, mode
        assert engine.core.cache.num_hit_tokens > 0, mode
        _assert_idle(engine)
    (overlap_tokens, overlap_reasons), (sync_tokens, sync_reasons) = results["overlap"], results["sync"]
    assert overlap_reasons["victim"].kind == sync_reasons["victim"].kind == "abort"
    for request_id in [j[0] for j in _workload(engines["sync"].tokenizer) if j[0] != "victim"]:
        assert overlap_tokens[request_id] == sync_tokens[request_id], request_id
        assert overlap_reasons[request_id] == sync_reasons[request_id], request_id
    assert sync_tokens["prefill-only"] == [] and sync_reasons["prefill-only"].kind == "length"


def test_a_launched_step_is_in_flight_between_calls(engines):
    core = engines["overlap"].core
    ids = core.tokenizer.encode("The capital of France is")
    core.add_request("inflight", ids, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert core.step() == []  # the prefill is launched; its token is not known yet
    request = core.requests["inflight"]
    assert core.has_work and core.scheduler.num_unresolved == 1 and request.num_inflight == 1
    assert core.flush_cache() is False
    outputs = core.step()  # launches the first decode, then resolves the prefill
    assert [len(o.new_token_ids) for o in outputs] == [1] and request.num_inflight == 1
    while core.has_work:
        core.step()
    assert len(request.output_ids) == 3 and request.finish_reason.kind == "length"
    _assert_idle(engines["overlap"])
    assert core.flush_cache() is True


def test_stop_strings_stop_ids_and_logprobs_match_without_overlap(engines):
    engine = engines["sync"]
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Count from 1 to 10, comma separated."}])
    free = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 30})
    stop_string = free["text"][free["text"].index("4") :][:2]
    stop_id = free["output_ids"][5]
    cases = [
        {"temperature": 0, "max_new_tokens": 30, "stop": [stop_string]},
        {"temperature": 0, "max_new_tokens": 30, "stop_token_ids": [stop_id]},
        {"temperature": 0.7, "seed": 3, "max_new_tokens": 12, "n": 2, "ignore_eos": True},
    ]
    for params in cases:
        outs = {
            mode: e.generate(prompt, params, return_logprob=True, top_logprobs_num=2) for mode, e in engines.items()
        }
        overlap, sync = (out if isinstance(out, list) else [out] for out in (outs["overlap"], outs["sync"]))
        for a, b in zip(overlap, sync, strict=True):
            assert (a["text"], a["output_ids"]) == (b["text"], b["output_ids"]), params
            assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"], params
            logprobs = [[lp for lp, _ in o["meta_info"]["output_token_logprobs"]] for o in (a, b)]
            assert logprobs[0] == pytest.approx(logprobs[1], abs=1e-5)
            assert [t for t, _ in a["meta_info"]["output_top_logprobs"][0]] == [
                t for t, _ in b["meta_info"]["output_top_logprobs"][0]
            ]
    for engine in engines.values():
        _assert_idle(engine)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}


def test_grammar_and_penalty_requests_force_exact_history_and_batch_with_plain_ones(engines):
    prompt = engines["sync"].tokenizer.apply_chat_template([{"role": "user", "content": "Name a city in JSON."}])
    params = [
        {"temperature": 0, "max_new_tokens": 40, "json_schema": json.dumps(SCHEMA)},
        {"temperature": 0, "max_new_tokens": 16, "repetition_penalty": 1.3, "frequency_penalty": 0.5},
        {"temperature": 0, "max_new_tokens": 16},
    ]
    outs = {mode: e.generate([prompt] * 3, params) for mode, e in engines.items()}
    jsonschema.validate(json.loads(outs["overlap"][0]["text"]), SCHEMA)
    assert [o["output_ids"] for o in outs["overlap"]] == [o["output_ids"] for o in outs["sync"]]
    for engine in engines.values():
        _assert_idle(engine)


def _fail_nth(runner, where: str, n: int):
    """Make the n-th launch from now (0-based) fail, in ``launch`` itself or in its ``result()``."""
    real_launch = runner.launch
    count = iter(range(1_000_000))

    def launch(*args, **kwargs):
        if next(count) != n:
            return real_launch(*args, **kwargs)
        runner.launch = real_launch
        if where == "launch":
            raise RuntimeError("injected device fault")
        pending = real_launch(*args, **kwargs)

        def result():
            raise RuntimeError("injected device fault")

        pending.result = result
        return pending

    runner.launch = launch


@pytest.mark.parametrize("where", ["launch", "result"])
@pytest.mark.parametrize("mode", ["overlap", "sync"])
def test_a_failed_step_mid_decode_leaves_the_engine_usable_and_the_cache_clean(engines, mode, where):
    engine = engines[mode]
    prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": f"Name a {c} fruit."}]) for c in "ab"]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    engine.flush_cache()
    expected = [o["output_ids"] for o in engine.generate(prompts, params)]
    engine.flush_cache()
    _fail_nth(engine.core.runner, where, n=3)  # prefill, two decodes, then the fault
    failed = engine.generate(prompts, params)
    assert all(o["meta_info"]["finish_reason"]["type"] == "error" for o in failed)
    assert all("injected device fault" in o["meta_info"]["finish_reason"]["message"] for o in failed)
    _assert_idle(engine)
    assert [o["output_ids"] for o in engine.generate(prompts, params)] == expected
    _assert_idle(engine)
