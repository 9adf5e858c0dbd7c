"""Piecewise CUDA graphs (runner/piecewise_graph.py) against the eager model, on a real GPU.

A small random Llama in bf16 runs a prefill step and then a mixed decode + extend step, once
eagerly (``backend.prepare`` + ``model``) and once from the replayed pieces with the same backend
between them. The pieces pad the step to a captured token count; GEMMs of another row count may
take other kernels, so logits agree to bf16 rounding rather than bit for bit. The engine-level
checks (greedy outputs of whole runs with the pieces on, against the plain eager loop) are the
graph and overlap tests of test_engine_gpu.py, whose fast engines now run their prefill, mixed and
cascade steps this way.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.gpu.test_engine_gpu import SMALL_LLAMA

pytestmark = pytest.mark.gpu

BACKENDS = [
    "triton",
    pytest.param(
        "flashinfer", marks=pytest.mark.skipif(importlib.util.find_spec("flashinfer") is None, reason="no flashinfer")
    ),
]
SLOTS_PER_SEQUENCE = 512


# Qwen3's per-head q/k norms make q and k new tensors rather than views of the QKV output
QWEN3 = {**SMALL_LLAMA, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 128}


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_and_config(request, tmp_path_factory):
    from radixserve.model.loader import load_model

    directory = tmp_path_factory.mktemp(f"small-{request.param}-pieces")
    (directory / "config.json").write_text(json.dumps(SMALL_LLAMA if request.param == "llama" else QWEN3))
    torch.manual_seed(3)
    return load_model(str(directory), load_format="dummy", dtype=torch.bfloat16, device="cuda")


def _batch(steps: list[tuple[int, int]], vocab: int, seed: int, backend):
    """A step over sequences given as ``(prefix_len, extend_len)``; sequence ``i`` owns slots
    ``1 + i * SLOTS_PER_SEQUENCE ...``; every sequence is sampled."""
    from radixserve.attention.base import ForwardBatch

    gen = torch.Generator().manual_seed(seed)
    ids, positions, out_slots, kv_slots, qo, kv = [], [], [], [], [0], [0]
    for i, (prefix, extend) in enumerate(steps):
        base = 1 + i * SLOTS_PER_SEQUENCE
        ids += torch.randint(3, vocab, (extend,), generator=gen).tolist()
        positions += range(prefix, prefix + extend)
        out_slots += range(base + prefix, base + prefix + extend)
        kv_slots += range(base, base + prefix + extend)
        qo.append(qo[-1] + extend)
        kv.append(kv[-1] + prefix + extend)

    def cuda(values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype, device="cuda")

    return ForwardBatch(
        input_ids=cuda(ids),
        positions=cuda(positions),
        out_slots=cuda(out_slots),
        qo_indptr=cuda(qo),
        kv_indptr=cuda(kv),
        kv_slots=cuda(kv_slots, torch.int32),
        seq_lens=[p + e for p, e in steps],
        extend_lens=[e for _, e in steps],
        logits_indices=cuda([q - 1 for q in qo[1:]]),
        attn_backend=backend,
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_replayed_pieces_match_the_eager_model(backend_name, model_and_config):
    from radixserve.attention import create_backend
    from radixserve.runner.kv_pool import KVPool
    from radixserve.runner.piecewise_graph import PiecewiseGraphRunner

    model, config = model_and_config
    device = torch.device("cuda")
    pool = KVPool(
        1 + 4 * SLOTS_PER_SEQUENCE, config.num_layers, config.num_kv_heads, config.head_dim, torch.bfloat16, device
    )
    backend = create_backend(backend_name, pool, config.num_heads)
    backend.warmup(config.num_heads)
    pieces = PiecewiseGraphRunner(model, backend, 256, device)
    pieces.capture(config.num_heads, config.head_dim, torch.bfloat16)
    assert all(len(p.graphs) == config.num_layers + 1 for p in pieces.pieces.values())

    steps = [
        [(0, 37), (0, 5), (0, 100)],  # a prefill of three prompts: 142 tokens, padded to 256
        [(37, 1), (5, 1), (100, 20), (0, 3)],  # decodes, an extend over its own context, a new prompt
        [(38, 1), (6, 1), (120, 1), (3, 1)],  # a decode step: 4 tokens in the 16-token pieces
        [(0, 128), (0, 128)],  # exactly the largest size: no padding
    ]
    for number, step in enumerate(steps):
        batch = _batch(step, config.vocab_size, seed=number, backend=backend)
        assert pieces.can_run(batch)
        with torch.inference_mode():
            backend.prepare(batch)
            eager = model(batch)
            backend.prepare(batch)
            replayed = pieces.replay(batch)
        assert replayed.shape == eager.shape == (len(step), config.vocab_size)
        assert torch.isfinite(replayed).all()
        scale = eager.abs().max()
        assert (replayed - eager).abs().max() <= 2e-2 * scale, (number, (replayed - eager).abs().max(), scale)

    too_big = _batch([(0, 257)], config.vocab_size, seed=9, backend=backend)
    assert not pieces.can_run(too_big)
