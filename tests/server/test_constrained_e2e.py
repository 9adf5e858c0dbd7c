"""Constrained decoding through the real server: every output parses and validates."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from tests.server.schemas import SCHEMAS

MODEL = "SmolLM2-135M-Instruct"


def _ask(client, prompt: str, schema: dict, name: str):
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=400,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    )


def test_twenty_schemas_all_parse_and_validate(client):
    assert len(SCHEMAS) >= 20
    with ThreadPoolExecutor(len(SCHEMAS)) as pool:  # concurrent: the engine batches them
        replies = dict(
            zip(SCHEMAS, pool.map(lambda item: _ask(client, item[1][0], item[1][1], item[0]), SCHEMAS.items()))
        )
    unfinished = {n: r.choices[0].message.content for n, r in replies.items() if r.choices[0].finish_reason != "stop"}
    assert unfinished == {}
    for name, reply in replies.items():
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMAS[name][1])


def test_json_object_mode_and_sampling(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        max_tokens=400,
        temperature=0.7,
        top_p=0.9,
        seed=1,
        n=2,
        response_format={"type": "json_object"},
        extra_body={"repetition_penalty": 1.3},
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(json.loads(choice.message.content), dict)


def test_regex_and_ebnf_on_completions(client):
    out = client.completions.create(
        model=MODEL,
        prompt="The answer is",
        max_tokens=20,
        temperature=0,
        extra_body={"regex": r"(yes|no), because [a-z ]{3,20}\."},
    )
    assert re.fullmatch(r"(yes|no), because [a-z ]{3,20}\.", out.choices[0].text)
    grammar = 'root ::= "(" num " + " num ") = " num\nnum ::= [0-9] | [1-9] [0-9]'
    out = client.completions.create(
        model=MODEL, prompt="Arithmetic:", max_tokens=30, temperature=0, extra_body={"ebnf": grammar}
    )
    assert re.fullmatch(r"\([0-9]+ \+ [0-9]+\) = [0-9]+", out.choices[0].text)


def test_streaming_constrained_output_is_valid(client):
    name, (prompt, schema) = "event", SCHEMAS["event"]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=400,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)


def test_invalid_constraints_are_400_with_the_compiler_message(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body={"regex": "(ab"})
    assert err.value.body["param"] == "regex" and "parenthesis" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}},
        )
    assert err.value.body["param"] == "json_schema"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=MODEL, prompt="x", max_tokens=5, extra_body={"regex": "a", "ebnf": 'root ::= "a"'}
        )
    assert err.value.body["param"] in ("regex", "ebnf")
