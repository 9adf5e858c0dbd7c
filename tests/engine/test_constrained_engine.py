"""Constrained decoding inside the engine: cache hits, chunked prefill, retraction, n > 1, errors."""

from __future__ import annotations

import json

import jsonschema
import pytest

from radixserve import Engine
from radixserve.core.sampling_params import InvalidParamError

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z]{1,12}$"},
        "visits": {"type": "integer", "minimum": 0},
    },
    "required": ["city", "visits"],
}


def _prompts(engine, count: int) -> list[str]:
    return [
        engine.tokenizer.apply_chat_template([{"role": "user", "content": f"Which city should I visit? #{i}"}])
        for i in range(count)
    ]


def _check(outputs) -> list[str]:
    texts = [o["text"] for o in outputs]
    for out in outputs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), SCHEMA)
    return texts


def test_constrained_requests_hit_the_cache_and_survive_chunking_and_retraction(engine):
    params = {"temperature": 0, "max_new_tokens": 60, "json_schema": json.dumps(SCHEMA)}
    prompts = _prompts(engine, 6)
    reference = _check(engine.generate(prompts, params))
    again = engine.generate(prompts, params)
    assert all(o["meta_info"]["cached_tokens"] > 0 for o in again)
    assert _check(again) == reference
    tight = Engine(max_total_tokens=120, chunked_prefill_size=9, schedule_conservativeness=0.0)
    assert _check(tight.generate(prompts, params)) == reference
    assert tight.core.scheduler.num_retractions > 0
    tight.core.check_invariants()
    assert tight.core.cache.accounting()["protected"] == 0


def test_n_samples_each_get_their_own_matcher(engine):
    outs = engine.generate(
        _prompts(engine, 1)[0],
        {"temperature": 1.0, "seed": 4, "n": 3, "max_new_tokens": 60, "json_schema": json.dumps(SCHEMA)},
    )
    _check(outs)


def test_invalid_grammar_raises_and_leaks_nothing(engine):
    with pytest.raises(InvalidParamError) as err:
        engine.generate("x", {"ebnf": "root ::= undefined_rule"})
    assert err.value.param == "ebnf" and "undefined_rule" in str(err.value)
    with pytest.raises(InvalidParamError):
        engine.generate("x", {"regex": "a", "json_object": True})
    engine.core.check_invariants()
    assert not engine.core.has_work
