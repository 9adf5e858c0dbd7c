"""FlashInfer's ``ragged_prefill``: a step whose sequences all start from an empty context attends
over the new K/V tensors (ragged) instead of the pool's pages; any other step keeps the paged path.
Against the float32 reference, and the K/V still land in the pool for the steps after."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.gpu.test_attention_backends import (
    LAYER,
    MIXED,
    NUM_KV_HEADS,
    PREFILL,
    REL_TOL,
    Shape,
    assert_close,
    make_batch,
    make_pool,
    make_sequences,
    new_tokens,
    reference,
    write_past,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None, reason="needs flashinfer"
    ),
]


def _step(specs, shape: Shape, shared_len: int = 0):
    from radixserve.attention import create_backend

    device = torch.device("cuda")
    sequences = make_sequences(specs, shape, device, shared_len=shared_len)
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    backend = create_backend("flashinfer", pool, shape.num_q_heads, ragged_prefill=True)
    batch = make_batch(sequences, device)
    q, k, v = new_tokens(sequences)
    backend.prepare(batch)
    out = backend.forward(q, k, v, LAYER, batch, shape.head_dim**-0.5)
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])
    k_pool, v_pool = pool.get(LAYER)
    assert torch.equal(k_pool[batch.out_slots.long()], k) and torch.equal(v_pool[batch.out_slots.long()], v)
    return backend


@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefills_from_an_empty_context_run_ragged(group):
    backend = _step(PREFILL["big"], Shape(NUM_KV_HEADS * group, 128))
    assert backend.step_ragged


@pytest.mark.parametrize("group", [1, 4, 8])
def test_steps_over_cached_context_stay_paged(group):
    shared_len, specs = MIXED["big"]
    backend = _step(specs, Shape(NUM_KV_HEADS * group, 128), shared_len=shared_len)
    assert not backend.step_ragged
