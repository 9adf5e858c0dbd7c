"""Greedy output is token-identical to Hugging Face ``generate`` on the same weights (float32, CPU),
whatever the batching, chunking, prefix hits or retraction."""

from __future__ import annotations

import pytest
import torch

from radixserve import Engine

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Who wrote Romeo and Juliet?",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painting by Leonardo da Vinci.",
    "Why is the sky blue?",
]
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def hf_outputs(hf_model, prompts):
    outs = []
    with torch.inference_mode():
        for ids in prompts:
            generated = hf_model.generate(
                torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
            outs.append(generated[0, len(ids) :].tolist())
    return outs


def _greedy(engine, prompts):
    params = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    return [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]


def test_batched_greedy_matches_hf(engine, prompts, hf_outputs):
    engine.flush_cache()
    assert _greedy(engine, prompts) == hf_outputs
    assert "Paris" in engine.tokenizer.decode(hf_outputs[0])


def test_prefix_hits_do_not_change_greedy_output(engine, prompts, hf_outputs):
    _greedy(engine, prompts)  # warm the tree: every prompt now hits
    outs = engine.generate(
        input_ids=prompts,
        sampling_params={"temperature": 0, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS},
    )
    assert all(o["meta_info"]["cached_tokens"] == len(ids) - 1 for o, ids in zip(outs, prompts))
    assert [o["output_ids"] for o in outs] == hf_outputs


@pytest.mark.parametrize(
    "options",
    [
        {"chunked_prefill_size": 7},  # every prompt split into several chunks, mixed with decodes
        {"max_total_tokens": 160, "max_running_requests": 8},  # decode runs out of KV: retraction
        {"max_running_requests": 1, "schedule_policy": "fcfs"},  # one at a time
        {"disable_radix_cache": True, "schedule_policy": "dfs-weight"},
    ],
    ids=["chunked", "retraction", "serial", "no-cache"],
)
def test_scheduling_variants_match_hf(default_model_dir, prompts, hf_outputs, options):
    engine = Engine(**options) if "max_total_tokens" in options else Engine(max_total_tokens=4096, **options)
    assert _greedy(engine, prompts) == hf_outputs
    if "max_total_tokens" in options:
        assert engine.core.scheduler.num_retractions > 0
    engine.core.check_invariants()
    acct = engine.core.cache.accounting()
    assert acct["protected"] == 0 and acct["free"] + acct["evictable"] == acct["pool_size"]
