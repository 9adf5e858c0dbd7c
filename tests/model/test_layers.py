"""Layers against their Hugging Face transformers counterparts, on the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from radixserve.model.layers import GatedMLP, Linear, RMSNorm, RotaryEmbedding, rope_inv_freq
from radixserve.model.model_config import ModelConfig

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def hf_llama_config(**overrides) -> LlamaConfig:
    fields = dict(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def test_rmsnorm_matches_hf():
    torch.manual_seed(0)
    x = torch.randn(5, 64) * 3
    ours = RMSNorm(64, eps=1e-6, dtype=torch.float32)
    ours.weight.data.uniform_(0.5, 1.5)
    theirs = LlamaRMSNorm(64, eps=1e-6)
    theirs.weight.data.copy_(ours.weight.data)
    assert torch.equal(ours(x), theirs(x))
    assert RMSNorm(64, eps=1e-6, dtype=torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_SCALING, {"rope_type": "linear", "factor": 4.0}])
def test_rotary_matches_hf(rope_scaling):
    hf_config = hf_llama_config(rope_scaling=rope_scaling, rope_theta=500000.0)
    config = ModelConfig.from_hf_config({**hf_config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    hf_rotary = LlamaRotaryEmbedding(hf_config)
    ours = RotaryEmbedding(config.head_dim, 512, config.rope_theta, config.rope_scaling)
    torch.testing.assert_close(rope_inv_freq(16, config.rope_theta, config.rope_scaling), hf_rotary.inv_freq)

    positions = torch.tensor([0, 1, 7, 63, 64, 200, 511])
    q = torch.randn(len(positions), 4, 16)  # [T, Hq, D]
    k = torch.randn(len(positions), 2, 16)  # [T, Hkv, D]
    cos, sin = hf_rotary(q, positions[None])  # [1, T, D]
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    q_ours, k_ours = ours(positions, q, k)
    torch.testing.assert_close(q_ours, q_hf[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_ours, k_hf[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


def test_llama3_scaling_keeps_high_frequencies_and_slows_low_ones():
    config = ModelConfig.from_hf_config(
        {**hf_llama_config(rope_scaling=LLAMA3_SCALING).to_dict(), "architectures": ["LlamaForCausalLM"]}
    )
    plain = rope_inv_freq(16, 10000.0, None)
    scaled = rope_inv_freq(16, 10000.0, config.rope_scaling)
    assert scaled[0] == plain[0]  # wavelength 2*pi, far below 64 / 4
    assert torch.isclose(scaled[-1], plain[-1] / 8)  # wavelength ~ 2*pi*10000^(7/8), far above 64


def test_gated_mlp_matches_hf_with_fused_gate_up():
    torch.manual_seed(0)
    theirs = LlamaMLP(hf_llama_config())
    ours = GatedMLP(64, 96, bias=False, dtype=torch.float32)
    with torch.no_grad():
        ours.gate_up_proj.weight.copy_(torch.cat([theirs.gate_proj.weight, theirs.up_proj.weight]))
        ours.down_proj.weight.copy_(theirs.down_proj.weight)
    x = torch.randn(3, 64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


def test_linear_allocates_without_initialising_and_has_optional_bias():
    layer = Linear(8, 4, bias=True, dtype=torch.bfloat16)
    assert layer.weight.shape == (4, 8) and layer.bias.shape == (4,)
    assert layer.weight.dtype == torch.bfloat16
    assert Linear(8, 4, bias=False, dtype=torch.float32).bias is None
