"""--triton-decode-max-bs: which backend runs which step, and the flag's validation (CPU).

The split only routes; the kernels on each side are checked on the GPU (tests/gpu: the
"flashinfer+triton-decode" backend cases and the engine test). Here both sides are real
TorchNativeBackends over one pool, so each step's output can be compared with a direct run.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from radixserve.attention import (
    AUTO_TRITON_DECODE_MAX_BS,
    AUTO_TRITON_DECODE_MAX_BS_TUNED,
    create_backend,
    resolve_triton_decode_max_bs,
)
from radixserve.attention.base import ForwardBatch
from radixserve.attention.small_decode import SmallDecodeSplit
from radixserve.attention.torch_native import TorchNativeBackend
from radixserve.config import ServerArgs
from radixserve.runner.kv_pool import KVPool

HQ, HKV, D = 4, 2, 16
SCALE = D**-0.5


def _batch(seq_lens: list[int], extend_lens: list[int]) -> ForwardBatch:
    """Sequence i's context in slots 1 + 100 i ... (slot 0 is the dummy slot)."""
    slots = [[1 + 100 * i + j for j in range(n)] for i, n in enumerate(seq_lens)]
    qo, kv = [0], [0]
    for n, e in zip(seq_lens, extend_lens):
        qo.append(qo[-1] + e)
        kv.append(kv[-1] + n)
    return ForwardBatch(
        input_ids=torch.zeros(qo[-1], dtype=torch.int64),
        positions=torch.zeros(qo[-1], dtype=torch.int64),
        out_slots=torch.tensor([s for row, e in zip(slots, extend_lens) for s in row[len(row) - e :]]),
        qo_indptr=torch.tensor(qo),
        kv_indptr=torch.tensor(kv),
        kv_slots=torch.tensor([s for row in slots for s in row], dtype=torch.int32),
        seq_lens=seq_lens,
        extend_lens=extend_lens,
        logits_indices=torch.arange(qo[-1]),
    )


@pytest.fixture
def pool() -> KVPool:
    pool = KVPool(1 + 100 * 8, 2, HKV, D, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for k, v in zip(pool.k_buffers, pool.v_buffers):
        k.copy_(torch.randn(k.shape, generator=gen))
        v.copy_(torch.randn(v.shape, generator=gen))
    return pool


@pytest.mark.parametrize(
    "seq_lens, extend_lens, side",
    [
        ([5, 9, 3], [1, 1, 1], "small"),  # decode, 3 <= 4
        ([5, 9, 3, 7], [1, 1, 1, 1], "small"),  # decode, 4 <= 4
        ([5, 9, 3, 7, 2], [1, 1, 1, 1, 1], "large"),  # decode, 5 > 4
        ([5, 9], [1, 4], "large"),  # a decode mixed with an extend
        ([6], [6], "large"),  # prefill
    ],
)
def test_small_decode_batches_go_to_the_small_side_the_rest_to_the_large(pool, seq_lens, extend_lens, side):
    large, small = TorchNativeBackend(pool), TorchNativeBackend(pool)
    split = SmallDecodeSplit(large, small, max_small_bs=4)
    batch = _batch(seq_lens, extend_lens)
    routed = {"small": small, "large": large}[side]
    assert split.route(batch) is routed
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(batch.num_tokens, HQ, D, generator=gen)
    k, v = torch.randn(2, batch.num_tokens, HKV, D, generator=gen)
    split.prepare(batch)
    assert split._active is routed  # the forward below runs on the side that was prepared
    got = split.forward(q, k, v, 1, batch, SCALE)
    direct = TorchNativeBackend(pool)
    direct.prepare(batch)
    torch.testing.assert_close(got, direct.forward(q, k, v, 1, batch, SCALE))


@pytest.mark.parametrize("name, max_bs", [("torch_native", 8), ("triton", 8), ("flashinfer", -2)])
def test_the_flag_is_refused_where_it_cannot_apply(pool, name, max_bs):
    with pytest.raises(ValueError, match="triton-decode-max-bs"):
        create_backend(name, pool, HQ, triton_decode_max_bs=max_bs)


def test_auto_splits_only_flashinfer_and_only_where_triton_is_installed(pool):
    has_triton = importlib.util.find_spec("triton") is not None
    assert resolve_triton_decode_max_bs("flashinfer", -1) == (AUTO_TRITON_DECODE_MAX_BS if has_triton else 0)
    tuned = AUTO_TRITON_DECODE_MAX_BS_TUNED if has_triton else 0  # every decode batch where the launches are tuned
    assert resolve_triton_decode_max_bs("flashinfer", -1, tuned=True) == tuned
    assert resolve_triton_decode_max_bs("triton", -1, tuned=True) == 0
    assert resolve_triton_decode_max_bs("triton", -1) == 0
    assert resolve_triton_decode_max_bs("torch_native", -1) == 0
    assert resolve_triton_decode_max_bs("flashinfer", 5) == 5
    assert resolve_triton_decode_max_bs("flashinfer", 5, tuned=True) == 5
    assert isinstance(create_backend("torch_native", pool, HQ, triton_decode_max_bs=-1), TorchNativeBackend)
    assert ServerArgs().triton_decode_max_bs == -1  # auto is the default
