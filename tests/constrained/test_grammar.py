"""Grammar-constrained decoding with the real SmolLM2 tokenizer: compile, mask, walk, validate.

A "walk" stands in for a model: at each step it reads the matcher's mask, picks an allowed token
with a seeded RNG, and accepts it, until the matcher terminates. Whatever the walk produces must
parse and validate, because the grammar allowed nothing else.
"""

from __future__ import annotations

import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import transformers
import xgrammar as xgr

from radixserve.constrained import (
    GrammarBackend,
    GrammarError,
    GrammarSpec,
    allocate_bitmask,
    apply_bitmask_,
    bitmask_to_bool,
)

EOS = 2  # <|im_end|>
ENDOFTEXT = 0  # <|endoftext|>, a special token that is not a default stop token
NUM_PADDED = 40  # model vocab = tokenizer vocab + 40: not a multiple of 32 on purpose
# Walks favour tokens that close something, so strings and numbers end within a few steps.
CLOSERS = set('"]}),!>')
MAX_STEPS = 400


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return transformers.AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def vocab_size(default_model_dir):
    return json.loads((Path(default_model_dir) / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def backend(tokenizer, vocab_size):
    grammar_backend = GrammarBackend(tokenizer, vocab_size)
    yield grammar_backend
    grammar_backend.shutdown()


@pytest.fixture(scope="module")
def padded_backend(tokenizer, vocab_size):
    grammar_backend = GrammarBackend(tokenizer, vocab_size + NUM_PADDED)
    yield grammar_backend
    grammar_backend.shutdown()


@pytest.fixture(scope="module")
def closer_mask(backend):
    """``[V]`` bool: tokens whose text holds a closing character."""
    vocab = backend.tokenizer_info.decoded_vocab
    return np.array([bool(CLOSERS & set(text.decode("utf-8", "replace"))) for text in vocab])


def allowed_mask(grammar, vocab_size: int) -> np.ndarray:
    """``[V]`` bool of the tokens ``grammar`` allows next."""
    bitmask = allocate_bitmask(1, vocab_size)
    grammar.fill_mask(bitmask, 0)
    return bitmask_to_bool(bitmask, vocab_size)[0].numpy()


def allowed_ids(grammar, vocab_size: int) -> list[int]:
    return np.flatnonzero(allowed_mask(grammar, vocab_size)).tolist()


def walk(backend, grammar, closer_mask, seed: int) -> list[int]:
    """Token ids (stop token excluded) of one seeded walk through ``grammar`` to termination."""
    rng, token_ids, stops = random.Random(seed), [], list(grammar.stop_token_ids)
    for _ in range(MAX_STEPS):
        allowed = allowed_mask(grammar, backend.vocab_size)
        closing = allowed & closer_mask
        if allowed[stops].any():
            token = stops[int(np.argmax(allowed[stops]))]  # end as soon as the grammar allows
        else:
            candidates = np.flatnonzero(closing if closing.any() and rng.random() < 0.5 else allowed)
            token = int(candidates[rng.randrange(len(candidates))])
        assert grammar.accept(token)
        if grammar.is_terminated():
            assert token in stops and grammar.num_accepted == len(token_ids) + 1
            return token_ids
        token_ids.append(token)
    pytest.fail(f"walk did not terminate in {MAX_STEPS} steps: {token_ids}")


def generate(backend, spec, closer_mask, seed: int, tokenizer) -> str:
    grammar = backend.new_matcher(backend.compile(spec))
    return tokenizer.decode(walk(backend, grammar, closer_mask, seed))


POINT = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}
SCHEMAS = {
    "nested_required_optional": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
            },
            "nickname": {"type": "string"},
            "active": {"type": "boolean"},
        },
        "required": ["name", "address"],
    },
    "array_bounds": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-z]{1,6}$"},
                "minItems": 2,
                "maxItems": 4,
            }
        },
        "required": ["tags"],
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"type": "string", "enum": ["S", "M", "XL"]},
        },
        "required": ["color", "size"],
    },
    "ref_defs": {
        "$defs": {"point": POINT},
        "type": "object",
        "properties": {
            "start": {"$ref": "#/$defs/point"},
            "path": {"type": "array", "items": {"$ref": "#/$defs/point"}},
        },
        "required": ["start", "path"],
    },
    "any_of": {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}},
        "required": ["value"],
    },
    "string_pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["code"],
    },
    "bounded_numbers": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "delta": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 5},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["age", "delta"],
    },
    "top_level_array": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_walk_output_validates_against_schema(backend, closer_mask, tokenizer, name, seed):
    schema = SCHEMAS[name]
    text = generate(backend, GrammarSpec("json_schema", json.dumps(schema)), closer_mask, seed, tokenizer)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("seed", range(3))
def test_json_object_walk_is_an_object(backend, closer_mask, tokenizer, seed):
    text = generate(backend, GrammarSpec("json_object"), closer_mask, seed, tokenizer)
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "pattern", [r"(19|20)\d\d-(0[1-9]|1[0-2])-[0-3]\d", r"[a-z]{2,8}@[a-z]{3,6}\.(com|org)", r"(yes|no)!?"]
)
def test_regex_walk_matches(backend, closer_mask, tokenizer, pattern, seed):
    text = generate(backend, GrammarSpec("regex", pattern), closer_mask, seed, tokenizer)
    assert re.fullmatch(pattern, text), text


GREETING_EBNF = """
root ::= greeting " " name ("," " " name)* "!"
greeting ::= "hello" | "hi"
name ::= [A-Z] [a-z]*
"""


@pytest.mark.parametrize("seed", range(3))
def test_ebnf_walk_matches(backend, closer_mask, tokenizer, seed):
    text = generate(backend, GrammarSpec("ebnf", GREETING_EBNF), closer_mask, seed, tokenizer)
    assert re.fullmatch(r"(hello|hi) [A-Z][a-z]*(, [A-Z][a-z]*)*!", text), text


def test_structural_tag_walk_is_a_tool_call(backend, closer_mask, tokenizer):
    tag = {
        "type": "tag",
        "begin": "<tool_call>",
        "content": {"type": "json_schema", "json_schema": POINT},
        "end": "</tool_call>",
    }
    spec = GrammarSpec("structural_tag", json.dumps({"type": "structural_tag", "format": tag}))
    text = generate(backend, spec, closer_mask, 0, tokenizer)
    body = re.fullmatch(r"<tool_call>(.*)</tool_call>", text, re.DOTALL)
    assert body, text
    jsonschema.validate(json.loads(body.group(1)), POINT)


def test_same_spec_compiles_once(backend):
    spec = GrammarSpec("regex", "cache-[0-9]+")
    before = backend.num_compiles
    first, second = backend.submit(spec), backend.submit(GrammarSpec("regex", "cache-[0-9]+"))
    assert first is second and first.result() is second.result()
    assert backend.num_compiles == before + 1
    backend.compile(GrammarSpec("regex", "cache-[a-z]+"))
    assert backend.num_compiles == before + 2


def test_json_object_text_is_ignored():
    assert GrammarSpec("json_object", "anything") == GrammarSpec("json_object")
    with pytest.raises(GrammarError, match="unknown grammar kind"):
        GrammarSpec("yaml", "a: 1")


def test_concurrent_submits_share_one_compilation(backend):
    specs = [GrammarSpec("json_schema", json.dumps({"type": "array", "items": {"const": f"c{i}"}})) for i in range(3)]
    before, barrier = backend.num_compiles, threading.Barrier(12)

    def submit(index: int):
        barrier.wait()
        return backend.submit(specs[index % 3])

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = list(pool.map(submit, range(12)))
    assert backend.num_compiles == before + 3
    for index, future in enumerate(futures):
        assert future is futures[index % 3]
    assert len({id(future.result()) for future in futures}) == 3


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("regex", "a(b", "invalid regex: Regex parsing error at position 4: The parenthesis is not closed."),
        ("json_schema", "{not json", "invalid json_schema: Failed to parse JSON: syntax error"),
        ("json_schema", '{"type": "foo"}', 'invalid json_schema: Unsupported type "foo"'),
        ("json_schema", '{"$ref": "#/$defs/missing"}', "invalid json_schema: Cannot find field '$defs'"),
        ("ebnf", "root ::= foo", 'invalid ebnf: EBNF parser error at line 1, column 10: Rule "foo" is not defined'),
        ("ebnf", 'root ::= "a', 'invalid ebnf: EBNF lexer error at line 1, column 12: Expect " in string literal'),
        ("structural_tag", '{"type": "nope"}', "invalid structural_tag: Invalid structural tag error"),
    ],
)
def test_invalid_grammar_raises_with_compiler_message(backend, kind, text, message):
    future = backend.submit(GrammarSpec(kind, text))
    with pytest.raises(GrammarError) as raised:
        future.result()
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, ValueError) and "/project/cpp" not in str(raised.value)
    assert backend.submit(GrammarSpec(kind, text)) is future  # a bad spec is not recompiled


def test_complete_grammar_allows_only_stop_tokens_then_terminates(backend, tokenizer):
    grammar = backend.new_matcher(backend.compile(GrammarSpec("regex", "ab")))
    assert grammar.stop_token_ids == (EOS,)
    assert not grammar.accept(EOS)  # not complete yet
    assert grammar.accept(tokenizer.convert_tokens_to_ids("ab"))
    assert grammar.is_completed() and not grammar.is_terminated()
    assert allowed_ids(grammar, backend.vocab_size) == [EOS]
    assert grammar.accept(EOS) and grammar.is_terminated()
    assert not grammar.accept(EOS) and grammar.num_accepted == 2
    assert allowed_ids(grammar, backend.vocab_size) == [EOS]  # late fills stay samplable


def test_request_stop_tokens_replace_the_defaults(backend, tokenizer):
    grammar = backend.new_matcher(backend.compile(GrammarSpec("regex", "ab+")), stop_token_ids=[ENDOFTEXT])
    assert grammar.stop_token_ids == (ENDOFTEXT,)
    assert grammar.accept(tokenizer.convert_tokens_to_ids("ab"))
    allowed = allowed_ids(grammar, backend.vocab_size)
    assert ENDOFTEXT in allowed and EOS not in allowed
    assert tokenizer.convert_tokens_to_ids("b") in allowed  # the grammar may still continue
    assert grammar.accept(ENDOFTEXT) and grammar.is_terminated()
    assert allowed_ids(grammar, backend.vocab_size) == [ENDOFTEXT]


def test_an_ordinary_stop_token_is_no_longer_text(backend, tokenizer):
    """Why the engine should pass only eos/special ids as matcher stop tokens: "/" as a stop token
    leaves "a/b" with nothing allowed after "a" (no other token spells "/b")."""
    slash = tokenizer.convert_tokens_to_ids("/")
    grammar = backend.new_matcher(backend.compile(GrammarSpec("regex", "a/b")), stop_token_ids=[EOS, slash])
    assert grammar.accept(tokenizer.convert_tokens_to_ids("a"))
    assert allowed_ids(grammar, backend.vocab_size) == []
    assert not grammar.accept(slash)
    plain = backend.new_matcher(backend.compile(GrammarSpec("regex", "a/b")))
    assert plain.accept(tokenizer.convert_tokens_to_ids("a")) and slash in allowed_ids(plain, backend.vocab_size)


def test_special_and_padded_ids_are_never_allowed(padded_backend, vocab_size):
    model_vocab = padded_backend.vocab_size
    forbidden = np.zeros(model_vocab, dtype=bool)
    forbidden[:17] = True  # the special tokens...
    forbidden[EOS] = False  # ...but the eos, which ends the grammar
    forbidden[vocab_size:] = True  # the model's padding rows
    anything, json_object = (
        padded_backend.new_matcher(padded_backend.compile(GrammarSpec(kind, text)))
        for kind, text in [("regex", "(.|\n)*"), ("json_object", "")]
    )
    allowed = allowed_mask(anything, model_vocab)
    assert not (allowed & forbidden).any() and allowed[EOS]
    assert allowed.sum() > vocab_size - 200  # all else but lone UTF-8 continuation bytes
    assert not anything.accept(vocab_size + 3) and not anything.accept(1)
    rng = random.Random(0)
    while not json_object.is_terminated() and json_object.num_accepted < 40:
        allowed = allowed_mask(json_object, model_vocab)
        assert not (allowed & forbidden).any()
        assert json_object.accept(rng.choice(np.flatnonzero(allowed).tolist()))


@pytest.mark.xfail(strict=True, reason="xgrammar #800: minLength/maxLength strings admit raw C0 control chars")
def test_length_bounded_strings_reject_raw_control_characters(backend, tokenizer):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}}
    grammar = backend.new_matcher(backend.compile(GrammarSpec("json_schema", json.dumps(schema))))
    assert all(grammar.accept(t) for t in tokenizer.encode('{"name": "a', add_special_tokens=False))
    assert not grammar.accept(tokenizer.encode("\x1b", add_special_tokens=False)[0])


def test_replay_rebuilds_the_same_state(backend, closer_mask):
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["nested_required_optional"]))
    token_ids = walk(backend, backend.new_matcher(backend.compile(spec)), closer_mask, seed=7)
    original, rebuilt = backend.new_matcher(backend.compile(spec)), backend.new_matcher(backend.compile(spec))
    for token_id in token_ids[:10]:
        assert original.accept(token_id)
    rebuilt.replay(token_ids[:3])
    rebuilt.replay(token_ids[:10])
    assert rebuilt.num_accepted == 10
    assert allowed_ids(rebuilt, backend.vocab_size) == allowed_ids(original, backend.vocab_size)
    rebuilt.replay([*token_ids, EOS])
    assert rebuilt.is_terminated()
    with pytest.raises(GrammarError, match="position 2"):
        rebuilt.replay([*token_ids[:2], EOS])
    assert rebuilt.num_accepted == 2


def naive_bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    words = bitmask.tolist()
    return torch.tensor([[(row[t // 32] >> (t % 32)) & 1 == 1 for t in range(vocab_size)] for row in words])


@pytest.mark.parametrize("vocab_size", [1, 31, 32, 70, 1000])
def test_bitmask_to_bool_matches_naive_reference(vocab_size):
    width = (vocab_size + 31) // 32
    bitmask = torch.randint(
        -(2**31), 2**31 - 1, (3, width), dtype=torch.int32, generator=torch.Generator().manual_seed(vocab_size)
    )
    expected = naive_bitmask_to_bool(bitmask, vocab_size)
    assert torch.equal(bitmask_to_bool(bitmask, vocab_size), expected)
    logits = torch.randn(3, vocab_size, dtype=torch.float64)  # float64: the torch fallback path
    apply_bitmask_(logits, bitmask)
    assert torch.equal(torch.isinf(logits), ~expected)


def test_bitmask_to_bool_agrees_with_xgrammar_apply(backend, tokenizer, vocab_size):
    prefixes = ['{"name": "Al', '{"name": "Al", "address": {"city": "P', '{"name"', ""]
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["nested_required_optional"]))
    bitmask = allocate_bitmask(len(prefixes) + 1, vocab_size)  # the last row stays all-allowed
    for row, prefix in enumerate(prefixes):
        grammar = backend.new_matcher(backend.compile(spec))
        assert all(grammar.accept(t) for t in tokenizer.encode(prefix, add_special_tokens=False))
        assert grammar.fill_mask(bitmask, row)
    logits = torch.randn(len(prefixes) + 1, vocab_size, generator=torch.Generator().manual_seed(0))
    reference = logits.clone()
    xgr.apply_token_bitmask_inplace(reference, bitmask, vocab_size=vocab_size)
    allowed = bitmask_to_bool(bitmask, vocab_size)  # [5, V]
    assert torch.equal(allowed, reference != float("-inf")) and allowed[-1].all()
    assert torch.equal(apply_bitmask_(logits.clone(), bitmask), reference)
    rows = [1, 3]
    masked = apply_bitmask_(logits.clone(), bitmask, rows=rows)
    assert torch.equal(masked[rows], reference[rows]) and torch.equal(masked[[0, 2, 4]], logits[[0, 2, 4]])
    fallback = apply_bitmask_(logits.double(), bitmask, rows=rows)
    assert torch.equal(fallback.float(), masked)


def test_bitmask_width_is_checked():
    with pytest.raises(ValueError, match="needs 2"):
        bitmask_to_bool(torch.zeros(1, 3, dtype=torch.int32), 40)
