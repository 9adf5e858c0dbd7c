"""Our model equals Hugging Face transformers on the same weights, however the work is split into steps.

Tiny random checkpoints of each family are written with ``save_pretrained`` and loaded back through
our loader; the embedded SmolLM2 is checked the same way and must know the capital of France.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from radixserve.model import load_model
from tests.model import Chunk, greedy_generate, make_backend, make_batch, max_relative_error

TOLERANCE = 1e-4
TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,  # large enough that greedy decoding wanders instead of repeating one token
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
CASES = {
    "llama3-untied-sharded": ("llama", dict(rope_scaling=LLAMA3_SCALING, tie_word_embeddings=False), "40KB"),
    "mistral-tied": ("mistral", dict(tie_word_embeddings=True, sliding_window=None, num_key_value_heads=1), None),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6), None),
    "qwen3-qknorm-headdim": ("qwen3", dict(tie_word_embeddings=False, head_dim=32, attention_bias=True), None),
}
PROMPT = torch.randint(1, 256, (12,), generator=torch.Generator().manual_seed(0)).tolist()


def build_tiny_checkpoint(model_type: str, overrides: dict, path) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # HF inits norms to 1 and biases to 0; perturb them so a mis-mapping shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def tiny_pair(request, tmp_path_factory):
    model_type, overrides, max_shard_size = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf_model = build_tiny_checkpoint(model_type, overrides, path)
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    hf_model.save_pretrained(path, **save_kwargs)
    if max_shard_size:
        assert (path / "model.safetensors.index.json").exists()
    model, config = load_model(path)
    return hf_model, model, config


def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:  # [len(ids), vocab]
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float()


def test_full_prefill(tiny_pair):
    hf_model, model, config = tiny_pair
    backend = make_backend(config)
    logits = model(make_batch([Chunk(PROMPT, list(range(1, 13)))], backend, all_logits=True))
    assert logits.dtype == torch.float32 and logits.shape == (12, config.vocab_size)
    assert max_relative_error(logits, hf_logits(hf_model, PROMPT)) <= TOLERANCE


def test_prompt_in_two_chunks(tiny_pair):
    hf_model, model, config = tiny_pair
    backend = make_backend(config)
    slots = [31, 7, 19, 3, 44, 12, 25, 9, 50, 2, 38, 17]
    first = model(make_batch([Chunk(PROMPT[:5], slots[:5])], backend, all_logits=True))
    second = model(make_batch([Chunk(PROMPT[5:], slots)], backend, all_logits=True))
    expected = hf_logits(hf_model, PROMPT)
    assert max_relative_error(first, expected[:5]) <= TOLERANCE
    assert max_relative_error(second, expected[5:]) <= TOLERANCE


def test_prefix_hit_then_extend(tiny_pair):
    hf_model, model, config = tiny_pair
    backend = make_backend(config)
    earlier = PROMPT[:7] + [5, 6, 7]  # an earlier request shares the first 7 tokens
    earlier_slots = [60, 61, 62, 63, 64, 65, 66, 67, 68, 69]
    model(make_batch([Chunk(earlier, earlier_slots)], backend))
    # the new request reuses slots 60..66 from the tree and computes only its 5 new tokens
    slots = earlier_slots[:7] + [100, 90, 80, 70, 10]
    logits = model(make_batch([Chunk(PROMPT[7:], slots)], backend, all_logits=True))
    assert max_relative_error(logits, hf_logits(hf_model, PROMPT)[7:]) <= TOLERANCE


def test_token_by_token_decode(tiny_pair):
    hf_model, model, config = tiny_pair
    backend = make_backend(config)
    slots = list(range(200, 212))
    expected = hf_logits(hf_model, PROMPT)
    for length in range(1, len(PROMPT) + 1):
        logits = model(make_batch([Chunk(PROMPT[length - 1 : length], slots[:length])], backend))
        assert max_relative_error(logits[0], expected[length - 1]) <= TOLERANCE


def test_mixed_batch_of_extend_chunk_and_decodes(tiny_pair):
    hf_model, model, config = tiny_pair
    backend = make_backend(config)
    other = PROMPT[::-1]
    model(make_batch([Chunk(PROMPT[:6], [1, 2, 3, 4, 5, 6]), Chunk(other[:9], list(range(20, 29)))], backend))
    step = [
        Chunk(PROMPT[6:], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),  # second chunk
        Chunk(other[9:10], list(range(20, 30))),  # decode
        Chunk(PROMPT[3:4], [1, 2, 3, 40]),  # prefix hit of 3, a one-token extend
    ]
    logits = model(make_batch(step, backend))
    assert max_relative_error(logits[0], hf_logits(hf_model, PROMPT)[-1]) <= TOLERANCE
    assert max_relative_error(logits[1], hf_logits(hf_model, other[:10])[-1]) <= TOLERANCE
    assert max_relative_error(logits[2], hf_logits(hf_model, PROMPT[:4])[-1]) <= TOLERANCE


def test_greedy_generation_matches_hf_generate(tiny_pair):
    hf_model, model, config = tiny_pair
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([PROMPT]), max_new_tokens=16, do_sample=False)[0, 12:].tolist()
    ours = greedy_generate(model, make_backend(config), PROMPT, list(range(1, 40)), max_new_tokens=16)
    assert ours == expected


@pytest.fixture(scope="module")
def smollm(default_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    model, config = load_model(default_model_dir)
    return tokenizer, hf_model, model, config


def chat_ids(tokenizer, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def test_default_model_logits_match_hf(smollm):
    tokenizer, hf_model, model, config = smollm
    ids = chat_ids(tokenizer, "Name three colours of the rainbow.")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    logits = model(make_batch([Chunk(ids, list(range(1, len(ids) + 1)))], make_backend(config), all_logits=True))
    assert max_relative_error(logits, hf_logits(hf_model, ids)) <= TOLERANCE


def test_default_model_knows_the_capital_of_france(smollm):
    tokenizer, _, model, config = smollm
    ids = chat_ids(tokenizer, "What is the capital of France?")
    slots = list(range(1, len(ids) + 17))
    output = greedy_generate(model, make_backend(config), ids, slots, max_new_tokens=16, eos_ids=config.eos_token_ids)
    assert "Paris" in tokenizer.decode(output)
