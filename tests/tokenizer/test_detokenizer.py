"""Streaming detokenization with the real byte-level BPE tokenizer: deltas always add up to the full decode."""

from __future__ import annotations

import random

import pytest

from radixserve.tokenizer import IncrementalDetokenizer, Tokenizer
from radixserve.tokenizer.detokenizer import MAX_PENDING_TOKENS

TEXTS = [
    "Hello world",
    "   three leading spaces, then  two",
    "line one\nline two\n\n\tindented\r\n",
    "café, naïve, Ångström, ½ € ß",
    "中文字符测试，日本語のテキスト、한국어",
    "emoji 😀👍🏽👨‍👩‍👧 and a flag 🇫🇷!",
    "<|im_start|>assistant\nSure.<|im_end|>\n<|endoftext|>",
    "mixed é😀中 <file_sep> code<|im_end|><|im_end|>",
]
FLAG_COMBOS = [(True, True), (True, False), (False, True), (False, False)]
PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return Tokenizer(default_model_dir)


def _stream(tokenizer, ids, chunk_sizes, prompt_ids=(), **flags):
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, **flags)
    deltas, start = [], 0
    for size in chunk_sizes:
        deltas.append(detokenizer.step(ids[start : start + size]))
        start += size
    assert start >= len(ids)
    return deltas, detokenizer.flush()


def _random_chunks(rng, total):
    sizes = []
    while sum(sizes) < total:
        sizes.append(rng.randint(1, 4))
    return sizes


@pytest.mark.parametrize("skip_special_tokens, spaces_between_special_tokens", FLAG_COMBOS)
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_full_decode(tokenizer, text, skip_special_tokens, spaces_between_special_tokens):
    flags = {
        "skip_special_tokens": skip_special_tokens,
        "spaces_between_special_tokens": spaces_between_special_tokens,
    }
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt_ids = tokenizer.encode(PROMPT)
    expected = tokenizer.decode(ids, **flags)
    rng = random.Random(text)
    for chunk_sizes in [[1] * len(ids), *(_random_chunks(rng, len(ids)) for _ in range(10))]:
        deltas, tail = _stream(tokenizer, ids, chunk_sizes, prompt_ids, **flags)
        assert "".join(deltas) + tail == expected
        assert not any("\ufffd" in delta for delta in deltas)
        assert tail == ""  # valid text: nothing is left held back at the end


def test_emoji_split_across_tokens_is_held_until_complete(tokenizer):
    ids = tokenizer.encode(" 😀", add_special_tokens=False)
    assert len(ids) == 2 and "\ufffd" in tokenizer.decode(ids[:1])  # the premise: one character, two tokens
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.step(ids[:1]) == ""
    assert detokenizer.step(ids[1:]) == " 😀"


def test_prompt_tail_gives_the_first_token_its_context(tokenizer):
    prompt = tokenizer.encode("The capital of France is")
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    assert [detokenizer.step([i]) for i in tokenizer.encode(" Paris.")] == [" Paris", "."]


def test_prompt_ending_inside_a_character_is_not_context(tokenizer):
    ids = tokenizer.encode(" 😀", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, ids[:1])
    assert detokenizer.step(tokenizer.encode("ok")) == "ok"


def test_special_tokens_skipped_or_kept(tokenizer):
    hi, eos = tokenizer.encode("Hi"), tokenizer.eos_token_ids[0]
    skipping = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    assert [skipping.step(hi), skipping.step([eos])] == ["Hi", ""]
    spaced = IncrementalDetokenizer(tokenizer, skip_special_tokens=False, spaces_between_special_tokens=True)
    assert [spaced.step(hi), spaced.step([eos]), spaced.step(hi)] == ["Hi", " <|im_end|>", " Hi"]
    joined = IncrementalDetokenizer(tokenizer, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert [joined.step(hi), joined.step([eos]), joined.step(hi)] == ["Hi", "<|im_end|>", "Hi"]


def test_flush_releases_an_incomplete_character(tokenizer):
    ids = tokenizer.encode(" 😀", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.step(tokenizer.encode("a")) == "a"
    assert detokenizer.step(ids[:1]) == ""
    assert detokenizer.flush() == tokenizer.decode(ids[:1]) == " \ufffd"
    assert detokenizer.flush() == ""


def test_invalid_utf8_stream_stays_exact_and_bounded(tokenizer):
    """A model emitting raw bytes that never form characters: U+FFFD comes out, the window stays small."""
    partial = [i for i in range(len(tokenizer.special_ids), tokenizer.vocab_size) if "\ufffd" in tokenizer.decode([i])]
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice(partial) if rng.random() < 0.8 else rng.randrange(17, 49152) for _ in range(60)]
        detokenizer = IncrementalDetokenizer(tokenizer)
        deltas = []
        for token_id in ids:
            deltas.append(detokenizer.step([token_id]))
            assert detokenizer.window_len <= 3 * MAX_PENDING_TOKENS
        assert "".join(deltas) + detokenizer.flush() == tokenizer.decode(ids)


def test_window_stays_small_on_long_outputs(tokenizer):
    ids = tokenizer.encode("Streaming 中文 and 😀 emoji.\n" * 300, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    text = ""
    for token_id in ids:
        text += detokenizer.step([token_id])
        assert detokenizer.window_len <= 8
    assert text == tokenizer.decode(ids)
