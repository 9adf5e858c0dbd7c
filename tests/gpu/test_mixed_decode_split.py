"""FlashInfer's ``mixed_decode_split``: a mixed step's leading decodes on the decode kernels (or
the shared-prefix cascade), its prefill chunks on the prefill kernel, against the float32
reference and against the same step on the prefill kernel alone."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.gpu.test_attention_backends import (
    LAYER,
    MIXED,
    NUM_KV_HEADS,
    REL_TOL,
    Sequence,
    Shape,
    assert_close,
    make_batch,
    make_pool,
    make_sequences,
    new_tokens,
    reference,
    write_past,
)
from tests.gpu.test_shared_prefix_attention import SCENARIOS, cascade_backend, make_groups, with_identity

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None, reason="needs flashinfer"
    ),
]


def _run(sequences: list[Sequence], shape: Shape, split: int, min_saved_bytes: int = 64 << 20, on_triton=None):
    """One step through the flashinfer backend with ``mixed_decode_split = split`` (and the leading
    decodes on Triton's decode or BatchDecode when ``on_triton`` is set); (output, backend)."""
    pool = make_pool(sequences, shape, torch.device("cuda"))
    write_past(pool, sequences)
    backend = cascade_backend("flashinfer", pool, shape.num_q_heads, 256, min_saved_bytes)
    backend.mixed_decode_split = split
    if on_triton is not None:
        backend.triton_mixed_decodes = on_triton
    batch = with_identity(make_batch(sequences, pool.device), sequences)
    backend.prepare(batch)
    return backend.forward(*new_tokens(sequences), LAYER, batch, shape.head_dim**-0.5), backend


@pytest.mark.parametrize("on_triton", [False, True])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_leading_decodes_on_the_decode_kernel(group, on_triton):
    """The leading decodes on BatchDecode or on Triton's decode kernels (the default where those
    launches are tuned) match the reference and the step run on the prefill kernel alone."""
    shape = Shape(NUM_KV_HEADS * group, 128)
    shared_len, specs = MIXED["big"]  # two leading decodes, an extend, a decode among the chunks, ...
    sequences = make_sequences(specs, shape, torch.device("cuda"), shared_len=shared_len)
    split, backend = _run(sequences, shape, split=1, on_triton=on_triton)
    assert backend.step_split is not None and backend.step_split.head.batch_size == 2
    assert (backend.step_split.wrapper is None) == on_triton and (backend.step_split.triton_splits > 0) == on_triton
    assert_close(split, reference(sequences, shape, torch.device("cuda")), REL_TOL[shape.dtype])
    whole, backend = _run(sequences, shape, split=3)  # fewer leading decodes than the threshold
    assert backend.step_split is None
    assert_close(split, whole.float(), REL_TOL[shape.dtype])


@pytest.mark.parametrize("group", [1, 4, 8])
def test_leading_decodes_over_shared_prefixes_run_the_cascade(group):
    """Decodes of two groups over 2,048- and 700-token prefixes, then a 90-token prefill and a
    chunk over a context of its own: the decodes run the cascade, the rest the prefill kernel."""
    shape = Shape(NUM_KV_HEADS * group, 128)
    device = torch.device("cuda")
    decodes = make_groups(SCENARIOS["big"][:2], shape, device)
    offset = max(slot for s in decodes for slot in s.slots) + 1
    chunks = make_sequences([(False, 0, 90), (False, 300, 64)], shape, device, seed=5)
    chunks = [Sequence([slot + offset for slot in s.slots], s.extend_len, s.k, s.v, s.q) for s in chunks]
    sequences = decodes + chunks
    split, backend = _run(sequences, shape, split=1, min_saved_bytes=0)
    assert backend.step_split is not None and backend.step_split.cascade is not None
    assert backend.step_split.head.batch_size == len(decodes)
    assert_close(split, reference(sequences, shape, device), REL_TOL[shape.dtype])
    whole, _ = _run(sequences, shape, split=0)
    assert_close(split, whole.float(), REL_TOL[shape.dtype])
