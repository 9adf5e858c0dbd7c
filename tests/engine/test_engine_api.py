"""The offline API (SGLang's Engine shape), prefix reuse measured in computed tokens, sampling features."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from radixserve.core.sampling_params import InvalidParamError


def _assert_idle(engine) -> None:
    engine.core.check_invariants()
    acct = engine.core.cache.accounting()
    assert acct["protected"] == 0 and acct["free"] + acct["evictable"] == acct["pool_size"]


def test_single_prompt_returns_a_dict_and_a_list_returns_a_list(engine):
    out = engine.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 4})
    assert set(out) == {"text", "output_ids", "meta_info"}
    assert set(out["meta_info"]) >= {"prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason"}
    assert out["meta_info"]["completion_tokens"] == len(out["output_ids"]) <= 4
    outs = engine.generate(["Hello", "Goodbye"], {"temperature": 0, "max_new_tokens": 3})
    assert isinstance(outs, list) and len(outs) == 2
    by_ids = engine.generate(
        input_ids=engine.tokenizer.encode("The capital of France is"),
        sampling_params={"temperature": 0, "max_new_tokens": 4},
    )
    assert by_ids["output_ids"] == out["output_ids"]
    _assert_idle(engine)


def test_shared_500_token_prefix_is_computed_once(engine):
    filler = " ".join(f"item{i}" for i in range(400))
    shared = engine.tokenizer.encode("Inventory: " + filler)[:500]
    assert len(shared) == 500
    first = shared + engine.tokenizer.encode(" Question one?")
    second = shared + engine.tokenizer.encode(" Another question entirely?")
    engine.generate(input_ids=first, sampling_params={"temperature": 0, "max_new_tokens": 2})
    before = engine.core.num_tokens_computed
    out = engine.generate(input_ids=second, sampling_params={"temperature": 0, "max_new_tokens": 2})
    computed = engine.core.num_tokens_computed - before
    assert out["meta_info"]["cached_tokens"] >= 499
    # the uncached suffix, plus one decode step for the second output token
    assert computed == len(second) - out["meta_info"]["cached_tokens"] + 1
    _assert_idle(engine)


def test_n_samples_share_the_prompt_kv(engine):
    ids = engine.tokenizer.encode("Once upon a time, in a distant kingdom, there lived")
    engine.flush_cache()
    before = engine.core.num_tokens_computed
    outs = engine.generate(
        input_ids=ids, sampling_params={"n": 3, "temperature": 1.0, "seed": 5, "max_new_tokens": 6, "ignore_eos": True}
    )
    assert len(outs) == 3
    assert [o["meta_info"]["cached_tokens"] for o in outs] == [0, len(ids) - 1, len(ids) - 1]
    # prompt once, the last prompt token again for each sibling, then 5 decode steps each
    assert engine.core.num_tokens_computed - before == len(ids) + 2 + 3 * 5
    assert len({tuple(o["output_ids"]) for o in outs}) > 1


def test_seeded_sampling_is_reproducible_across_batches(engine):
    params = {"temperature": 0.9, "top_p": 0.95, "seed": 1234, "max_new_tokens": 12, "ignore_eos": True}
    alone = engine.generate("Tell me a story about a dragon.", params)
    batched = engine.generate(["Some other prompt", "Tell me a story about a dragon.", "x"], params)
    assert batched[1]["output_ids"] == alone["output_ids"]
    other_seed = engine.generate("Tell me a story about a dragon.", {**params, "seed": 99})
    assert other_seed["output_ids"] != alone["output_ids"]


def test_stop_strings_are_trimmed_and_reported(engine):
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Count from 1 to 10, comma separated."}])
    free = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 30})
    assert "4" in free["text"]
    stop = free["text"][free["text"].index("4") :][:2]
    trimmed = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 30, "stop": [stop]})
    assert trimmed["text"] == free["text"][: free["text"].index(stop)]
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    kept = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 30, "stop": stop, "no_stop_trim": True})
    assert kept["text"] == free["text"][: free["text"].index(stop) + len(stop)]


def test_eos_min_new_tokens_and_ignore_eos(engine):
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Say hi."}])
    natural = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 64})
    assert natural["meta_info"]["finish_reason"] == {"type": "stop", "matched": 2}
    n = natural["meta_info"]["completion_tokens"]
    longer = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 64, "min_new_tokens": n + 3})
    assert longer["meta_info"]["completion_tokens"] >= n + 3
    forced = engine.generate(prompt, {"temperature": 0, "max_new_tokens": n + 5, "ignore_eos": True})
    assert forced["meta_info"]["completion_tokens"] == n + 5
    assert forced["meta_info"]["finish_reason"] == {"type": "length"}


def test_logprobs_with_top_alternatives(engine):
    out = engine.generate(
        "The capital of France is", {"temperature": 0, "max_new_tokens": 3}, return_logprob=True, top_logprobs_num=4
    )
    logprobs = out["meta_info"]["output_token_logprobs"]
    tops = out["meta_info"]["output_top_logprobs"]
    assert [t for _, t in logprobs] == out["output_ids"]
    for (logprob, token), top in zip(logprobs, tops):
        assert len(top) == 4 and top[0][0] == token and top[0][1] == pytest.approx(logprob)
        assert all(a[1] >= b[1] for a, b in zip(top, top[1:])) and logprob <= 0


def test_bad_requests_raise_clear_errors_and_leak_nothing(engine):
    with pytest.raises(InvalidParamError) as err:
        engine.generate("hi", {"temperature": -1})
    assert err.value.param == "temperature"
    with pytest.raises(InvalidParamError) as err:
        engine.generate("hi", {"max_new_tokens": 10**6})
    assert err.value.param == "max_new_tokens"
    with pytest.raises(InvalidParamError, match="unknown sampling parameter"):
        engine.generate("hi", {"temprature": 0.5})
    with pytest.raises(InvalidParamError):
        engine.generate(["ok", "x"], [{"max_new_tokens": 2}, {"top_p": 0}])
    _assert_idle(engine)
    assert not engine.core.has_work


def test_cli_generate_prints_a_completion(default_model_dir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "radixserve",
            "generate",
            "--chat",
            "--max-new-tokens",
            "16",
            "--max-total-tokens",
            "1024",
            "What is the capital of France?",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_a_failed_step_frees_its_kv_and_does_not_poison_the_cache(engine):
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Name a red fruit."}])
    params = {"temperature": 0, "max_new_tokens": 8}
    engine.flush_cache()
    expected = engine.generate(prompt, params)["output_ids"]
    engine.flush_cache()
    runner, real_launch = engine.core.runner, engine.core.runner.launch

    def fail_once(*args, **kwargs):
        runner.launch = real_launch
        raise RuntimeError("injected device fault")

    runner.launch = fail_once
    failed = engine.generate(prompt, params)
    assert failed["meta_info"]["finish_reason"]["type"] == "error"
    assert "injected device fault" in failed["meta_info"]["finish_reason"]["message"]
    _assert_idle(engine)
    assert engine.generate(prompt, params)["output_ids"] == expected


def test_batch_log_counts_the_requests_each_prefill_step_admitted(engine, caplog):
    """With the overlap schedule a step is logged after the next one was scheduled: the prefill
    line must still count that step's own admissions and prefix hits."""
    core = engine.core
    assert core.overlap and engine.flush_cache()
    params = {"temperature": 0.0, "max_new_tokens": 3, "ignore_eos": True}
    shared = list(range(100, 180))
    with caplog.at_level(logging.INFO, logger="radixserve.engine"):
        engine.generate(input_ids=[shared + [7, 8]], sampling_params=params)
        engine.generate(input_ids=[shared + [9], shared + [10, 11], list(range(300, 340))], sampling_params=params)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Prefill batch.")]
    assert lines[0].startswith("Prefill batch. #new-seq: 1, #new-token: 82, #cached-token: 0,")
    assert lines[1].startswith("Prefill batch. #new-seq: 3, #new-token: 43, #cached-token: 160,")


def test_decode_log_line_splits_each_step_into_host_and_device_wait(engine, caplog):
    """Every decode line says how long a step took and how much of it the loop waited on the device
    (on CPU the forward runs inside the launch, so the wait is small but the step is not), and the
    host phases (schedule, launch, apply) that with the wait add up to no more than the step."""
    import re

    core = engine.core
    interval, core.step_log.decode_interval = core.step_log.decode_interval, 4
    try:
        params = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}
        with caplog.at_level(logging.INFO, logger="radixserve.engine"):
            engine.generate(input_ids=[list(range(100, 120)), list(range(200, 230))], sampling_params=params)
    finally:
        core.step_log.decode_interval = interval
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Decode batch.")]
    assert lines, [r.getMessage() for r in caplog.records]
    pattern = r"step ms: ([\d.]+), device wait ms: ([\d.]+), schedule ms: ([\d.]+), launch ms: ([\d.]+), apply ms: ([\d.]+), gc ms: ([\d.]+)$"
    for line in lines:
        step_ms, wait_ms, *host_ms, gc_ms = map(float, re.search(pattern, line).groups())
        assert gc_ms <= step_ms + 0.1, line
        assert 0 <= wait_ms <= step_ms and step_ms > 0, line
        assert host_ms[1] > 0 and wait_ms + sum(host_ms) <= step_ms + 0.3, line  # parts of the step (each rounded)


def test_the_engine_raises_the_collectors_young_threshold(engine):
    """A large batch's per-step allocations must not run the cyclic collector several times a step."""
    import gc

    from radixserve.engine.engine_core import GC_GEN0_THRESHOLD

    assert gc.get_threshold()[0] >= GC_GEN0_THRESHOLD


@pytest.mark.parametrize("stop", [None, ["."]])
def test_a_request_that_wants_its_text_whole_gets_the_streamed_text_at_once(engine, stop):
    """``stream=False``: empty deltas, then the whole text in the finishing output, equal to what a
    streaming request's deltas join to; with stop strings it still decodes as it goes (to find them)."""
    from radixserve.core.sampling_params import SamplingParams

    core = engine.core
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "Describe a quiet harbour town."}])
    params = {"temperature": 0.0, "max_new_tokens": 40, "stop": stop}
    deltas: dict[str, list[str]] = {"streamed": [], "whole": []}
    core.add_request("streamed", prompt, SamplingParams.from_dict(params))
    core.add_request("whole", prompt, SamplingParams.from_dict(params), stream=False)
    finished = {}
    while len(finished) < 2:
        for output in core.step():
            deltas[output.request_id].append(output.text_delta)
            if output.finished:
                finished[output.request_id] = output
    while core.has_work:
        core.step()
    streamed, whole = "".join(deltas["streamed"]), "".join(deltas["whole"])
    assert whole == streamed and len(streamed) > 10, (whole, streamed)
    assert finished["whole"].finish_reason == finished["streamed"].finish_reason
    if stop is None:
        assert all(delta == "" for delta in deltas["whole"][:-1]) and deltas["whole"][-1] == whole
        assert sum(1 for delta in deltas["streamed"] if delta) > 3  # the other one did stream
    else:
        assert finished["whole"].finish_reason.kind == "stop", finished["whole"]
    _assert_idle(engine)


def test_startup_objects_are_frozen_out_of_the_garbage_collector(engine):
    """A full collection would walk every object alive after startup on the loop's time."""
    import gc

    tracked = {id(obj) for obj in gc.get_objects()}
    core = engine.core
    assert gc.get_freeze_count() > 10_000
    for startup_object in (core.runner.model, core.scheduler, core.cache, core.tokenizer):
        assert gc.is_tracked(startup_object) and id(startup_object) not in tracked
