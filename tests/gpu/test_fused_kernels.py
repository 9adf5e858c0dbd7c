"""Fused elementwise kernels (radixserve.kernels.fused) against the torch path of model/layers.py.

Each op is compared in bf16 and fp32 on several shapes, q/k as strided views of one fused qkv row
(as the model produces them); the last test runs a tiny Llama and a tiny Qwen3 once on the fused
path and once on the torch path (the layers' kernel dispatch patched) and compares logits.

Without CUDA the kernel tests run under ``TRITON_INTERPRET=1`` (see conftest.py) on small sizes.
bf16 tolerances cover RoPE, which rounds once in float32 where the torch path rounds cos/sin and
each product to bf16; the norms and SiLU round where torch does (the residual sum matches exactly).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from radixserve.model import layers

fused = pytest.importorskip("radixserve.kernels.fused", reason="needs triton")

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float32]
REL_TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-5}
EPS = 1e-5
# (num_tokens, hidden); the GPU runs the big sizes, the interpreter the small ones
NORM_SHAPES = {
    "small": [(1, 64), (5, 96), (3, 576), (2, 100)],
    "big": [(1, 576), (7, 4096), (300, 8192), (16384, 4096)],
}
# (num_tokens, num_q_heads, num_kv_heads, head_dim)
ROPE_SHAPES = {
    "small": [(1, 4, 2, 64), (6, 5, 1, 128), (3, 2, 2, 64), (2, 8, 8, 128)],
    "big": [(1, 32, 8, 128), (257, 32, 8, 128), (16384, 14, 2, 64), (33, 5, 1, 64)],
}
MLP_SHAPES = {"small": [(1, 64), (4, 96), (2, 1100)], "big": [(1, 1536), (256, 14336), (16384, 1536)]}
NORM_CASES, ROPE_CASES, MLP_CASES = (range(len(shapes["big"])) for shapes in (NORM_SHAPES, ROPE_SHAPES, MLP_SHAPES))


def size(device) -> str:
    return "big" if device.type == "cuda" else "small"


def assert_close(ours: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> None:
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    error = float((ours.float() - reference.float()).abs().max() / reference.float().abs().max())
    assert error <= REL_TOL[dtype], f"max relative error {error:.2e}"


def randn(*shape, dtype, device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))) * scale).to(device, dtype)


def norm_weight(hidden: int, dtype, device) -> torch.Tensor:
    return (torch.rand(hidden, generator=torch.Generator().manual_seed(1)) + 0.5).to(device, dtype)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_index", NORM_CASES)
def test_rms_norm_matches_torch(dtype, shape_index, device):
    num_tokens, hidden = NORM_SHAPES[size(device)][shape_index]
    x = randn(num_tokens, hidden, dtype=dtype, device=device, scale=3.0)
    weight = norm_weight(hidden, dtype, device)
    assert_close(fused.rms_norm(x, weight, EPS), layers.rms_norm_torch(x, weight, EPS), dtype)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rms_norm_of_strided_heads_matches_torch(dtype, head_dim, device):
    """Qwen3's per-head q norm: q is a ``[T, Hq, D]`` view into the fused qkv output."""
    num_tokens, num_q_heads, num_kv_heads = 5, 4, 2
    qkv = randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, device=device)
    q = qkv[:, : num_q_heads * head_dim].view(num_tokens, num_q_heads, head_dim)
    weight = norm_weight(head_dim, dtype, device)
    out = fused.rms_norm(q, weight, EPS)
    assert out.is_contiguous()
    assert_close(out, layers.rms_norm_torch(q, weight, EPS), dtype)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_index", NORM_CASES)
def test_fused_add_rms_norm_matches_torch(dtype, shape_index, device):
    num_tokens, hidden = NORM_SHAPES[size(device)][shape_index]
    x = randn(num_tokens, hidden, dtype=dtype, device=device)
    residual = randn(num_tokens, hidden, dtype=dtype, device=device, scale=4.0).flip(0)
    weight = norm_weight(hidden, dtype, device)
    normed, new_residual = fused.fused_add_rms_norm(x, residual, weight, EPS)
    expected_residual = residual + x
    assert torch.equal(new_residual, expected_residual)
    assert_close(normed, layers.rms_norm_torch(expected_residual, weight, EPS), dtype)


def make_rope_inputs(num_tokens, num_q_heads, num_kv_heads, head_dim, dtype, device):
    """q, k, v as views of one ``[T, (Hq + 2 Hkv) * D]`` qkv tensor, positions spread over the cache."""
    max_positions = 4096
    rotary = layers.RotaryEmbedding(head_dim, max_positions, 500000.0, None, device=device)
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    qkv = randn(num_tokens, q_size + 2 * kv_size, dtype=dtype, device=device)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(num_tokens, num_q_heads, head_dim)  # [T, Hq, D], token stride (Hq + 2 Hkv) * D
    k = k.view(num_tokens, num_kv_heads, head_dim)  # [T, Hkv, D]
    positions = torch.randint(0, max_positions, (num_tokens,), generator=torch.Generator().manual_seed(2))
    return rotary, qkv, q, k, v, positions.to(device)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_index", ROPE_CASES)
def test_rope_inplace_on_strided_qk_matches_torch(dtype, shape_index, device):
    shape = ROPE_SHAPES[size(device)][shape_index]
    rotary, qkv, q, k, v, positions = make_rope_inputs(*shape, dtype, device)
    v_before = v.clone()
    q_ref, k_ref = layers.rope_torch(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    fused.rope_inplace(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    assert torch.equal(v, v_before)  # the rest of the qkv row is left alone


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("dtype, pool_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                                               (torch.bfloat16, torch.float32)])  # fmt: skip
@pytest.mark.parametrize("shape_index", ROPE_CASES)
def test_rope_with_store_writes_the_pool_as_rope_then_the_kv_store(dtype, pool_dtype, shape_index, device):
    """RoPE fused with the K/V store: q and k rotated in place exactly as without the store, and the
    pools hold the rotated k and the v at the tokens' slots (in the pools' dtype), nothing else."""
    shape = ROPE_SHAPES[size(device)][shape_index]
    num_tokens, _, num_kv_heads, head_dim = shape
    rotary, qkv, q, k, v, positions = make_rope_inputs(*shape, dtype, device)
    v = v.view(num_tokens, num_kv_heads, head_dim)
    num_slots = 3 * num_tokens + 5
    slots = torch.randperm(num_slots, generator=torch.Generator().manual_seed(3))[:num_tokens].to(device)
    k_pool = randn(num_slots, num_kv_heads, head_dim, dtype=pool_dtype, device=device)
    v_pool = randn(num_slots, num_kv_heads, head_dim, dtype=pool_dtype, device=device, scale=2.0)
    expected_k_pool, expected_v_pool = k_pool.clone(), v_pool.clone()
    plain = qkv.clone()
    q_plain, k_plain, _ = plain.split([q.shape[1] * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q_plain = q_plain.view(q.shape)
    k_plain = k_plain.view(k.shape)
    fused.rope_inplace(positions, q_plain, k_plain, rotary.cos_cache, rotary.sin_cache)
    expected_k_pool[slots] = k_plain.to(pool_dtype)
    expected_v_pool[slots] = v.to(pool_dtype)

    fused.rope_inplace(positions, q, k, rotary.cos_cache, rotary.sin_cache, store=(v, k_pool, v_pool, slots))
    assert torch.equal(qkv, plain)  # q and k rotated exactly as without the store, v untouched
    assert torch.equal(k_pool, expected_k_pool)
    assert torch.equal(v_pool, expected_v_pool)


@pytest.mark.triton_interpreter
def test_rope_accepts_int32_positions(device):
    rotary, qkv, q, k, v, positions = make_rope_inputs(3, 4, 2, 64, torch.float32, device)
    q_ref, k_ref = layers.rope_torch(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    fused.rope_inplace(positions.to(torch.int32), q, k, rotary.cos_cache, rotary.sin_cache)
    assert_close(q, q_ref, torch.float32)
    assert_close(k, k_ref, torch.float32)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_index", MLP_CASES)
def test_silu_and_mul_matches_torch(dtype, shape_index, device):
    num_tokens, intermediate = MLP_SHAPES[size(device)][shape_index]
    gate_up = randn(num_tokens, 2 * intermediate, dtype=dtype, device=device, scale=3.0)
    out = fused.silu_and_mul(gate_up)
    assert out.shape == (num_tokens, intermediate)
    assert_close(out, layers.silu_and_mul_torch(gate_up), dtype)


@pytest.mark.triton_interpreter
def test_empty_batch_launches_nothing(device):
    x = torch.empty(0, 64, device=device)
    weight = torch.ones(64, device=device)
    assert fused.rms_norm(x, weight, EPS).shape == (0, 64)
    assert [t.shape for t in fused.fused_add_rms_norm(x, x, weight, EPS)] == [(0, 64), (0, 64)]
    assert fused.silu_and_mul(torch.empty(0, 128, device=device)).shape == (0, 64)
    rotary, _, q, k, _, positions = make_rope_inputs(0, 4, 2, 64, torch.float32, device)
    fused.rope_inplace(positions, q, k, rotary.cos_cache, rotary.sin_cache)


# ---- a whole model: fused path vs torch path on the same GPU ------------------------------------

TINY_MODELS = {
    "llama3": dict(
        architectures=["LlamaForCausalLM"],
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        num_attention_heads=8,
        num_key_value_heads=2,
    ),
    "qwen3-qknorm": dict(
        architectures=["Qwen3ForCausalLM"], num_attention_heads=4, num_key_value_heads=2, head_dim=128
    ),
}


def build_tiny_model(name: str, device):
    from radixserve.model import LlamaForCausalLM, ModelConfig
    from radixserve.model.loader import init_dummy_weights

    hf = dict(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=3)
    hf.update(max_position_embeddings=1024, rope_theta=500000.0, rms_norm_eps=1e-5, **TINY_MODELS[name])
    config = ModelConfig.from_hf_config(hf)
    model = LlamaForCausalLM(config, torch.bfloat16, device).eval()
    init_dummy_weights(model, std=0.05)
    with torch.no_grad():  # norms away from 1, so that a mis-applied weight shows
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5, generator=torch.Generator(device=device).manual_seed(3))
    return model, config


def prefill_then_decode(model, config, device, dtype, backend_name: str = "torch_native") -> list[torch.Tensor]:
    """Two sequences prefilled in one step (logits for every token), then one decode step of both.
    On the Triton backend the fused path writes the K/V in its RoPE launch (``kv_target``)."""
    from radixserve.attention.base import ForwardBatch
    from radixserve.attention.torch_native import TorchNativeBackend
    from radixserve.runner.kv_pool import KVPool

    pool = KVPool(64, config.num_layers, config.num_kv_heads, config.head_dim, dtype, device)
    if backend_name == "triton":
        from radixserve.attention.triton_backend import TritonBackend

        backend = TritonBackend(pool, num_q_heads=config.num_heads)
    else:
        backend = TorchNativeBackend(pool)
    prompts = torch.randint(1, config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(4)).tolist()
    slots = [list(range(1, 15)), list(range(20, 34))]  # 13 prompt slots + 1 decode slot each

    def step(ids, positions, out_slots, seq_lens, extend_lens, logits_rows):
        def long(values):
            return torch.tensor(list(values), dtype=torch.int64, device=device)

        kv_slots = [slot for seq, n in zip(slots, seq_lens) for slot in seq[:n]]
        batch = ForwardBatch(
            input_ids=long(ids), positions=long(positions), out_slots=long(out_slots),
            qo_indptr=long([0, extend_lens[0], sum(extend_lens)]), kv_indptr=long([0, seq_lens[0], sum(seq_lens)]),
            kv_slots=long(kv_slots), seq_lens=seq_lens, extend_lens=extend_lens, logits_indices=long(logits_rows),
            attn_backend=backend,
        )  # fmt: skip
        backend.prepare(batch)
        return model(batch)

    positions = [*range(13), *range(13)]
    prefill = step(prompts[0] + prompts[1], positions, slots[0][:13] + slots[1][:13], [13, 13], [13, 13], range(26))
    next_ids = [7, 9]  # fixed, not sampled: both paths must decode the same tokens
    decode = step(next_ids, [13, 13], [slots[0][13], slots[1][13]], [14, 14], [1, 1], [0, 1])
    return [prefill, decode]


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("backend_name", ["torch_native", "triton"])
@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_model_logits_match_the_torch_path(name, backend_name, device, monkeypatch):
    """Same weights, both paths, fp32 and bf16. In fp32 the paths agree to rounding (this checks the
    wiring: residual stream, in-place RoPE on qkv views, per-head norms, and on the Triton backend
    the K/V written by the RoPE launch instead of the backend's store). In bf16 both are measured
    against the fp32 torch logits and the fused path must be as accurate as the torch path (it
    rounds less). On CUDA the layers' own dispatch picks the kernels; off CUDA they are forced."""
    dispatch = {"fused": layers._fused_kernels if device.type == "cuda" else (lambda x: fused), "torch": lambda x: None}
    if device.type == "cuda":
        assert layers.fused_ops() is fused
    bf16_model, config = build_tiny_model(name, device)
    models = {torch.bfloat16: bf16_model, torch.float32: copy.deepcopy(bf16_model).float()}
    stores = []  # which fused RoPE launches also wrote the K/V (the real kernel runs either way)
    rope_inplace = fused.rope_inplace
    monkeypatch.setattr(fused, "rope_inplace", lambda *a, **kw: (stores.append("store" in kw), rope_inplace(*a, **kw)))
    logits = {}
    for (dtype, model), path in itertools.product(models.items(), dispatch):
        monkeypatch.setattr(layers, "_fused_kernels", dispatch[path])
        logits[dtype, path] = prefill_then_decode(model, config, device, dtype, backend_name)
    assert stores and all(stores) == (backend_name == "triton")  # torch_native keeps its own store
    monkeypatch.setattr(layers, "_fused_kernels", dispatch["torch"])
    reference = prefill_then_decode(models[torch.float32], config, device, torch.float32)  # torch_native
    assert max_relative_error(logits[torch.float32, "torch"], reference) <= 1e-4
    assert max_relative_error(logits[torch.float32, "fused"], reference) <= 1e-4
    fused_error = max_relative_error(logits[torch.bfloat16, "fused"], reference)
    torch_error = max_relative_error(logits[torch.bfloat16, "torch"], reference)
    assert fused_error <= max(2e-2, 1.25 * torch_error), f"fused {fused_error:.2e}, torch path {torch_error:.2e}"


def max_relative_error(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, reference))
