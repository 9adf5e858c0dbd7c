"""``ForwardBatch.head``: a mixed step's leading sequences as a batch of their own (CPU, real
TorchNativeBackend over one pool), and the --mixed-decode-split flag's checks."""

from __future__ import annotations

import pytest
import torch

from radixserve.attention import AUTO_MIXED_DECODE_SPLIT, create_backend, resolve_mixed_decode_split
from radixserve.attention.base import ForwardBatch
from radixserve.attention.torch_native import TorchNativeBackend
from radixserve.runner.kv_pool import KVPool

HQ, HKV, D = 4, 2, 16
SCALE = D**-0.5


def _mixed_batch() -> ForwardBatch:
    """Three decodes (contexts 5, 9, 3), then a 4-token extend over 6 past tokens, then a decode:
    sequence i owns slots 1 + 50 i ..."""
    seq_lens, extend_lens = [5, 9, 3, 10, 7], [1, 1, 1, 4, 1]
    slots = [[1 + 50 * i + j for j in range(n)] for i, n in enumerate(seq_lens)]
    out_slots = [s for seq, e in zip(slots, extend_lens) for s in seq[-e:]]
    qo, kv = [0], [0]
    for n, e in zip(seq_lens, extend_lens):
        qo.append(qo[-1] + e)
        kv.append(kv[-1] + n)
    num_tokens = sum(extend_lens)
    return ForwardBatch(
        input_ids=torch.arange(num_tokens),
        positions=torch.tensor([n - e + j for n, e in zip(seq_lens, extend_lens) for j in range(e)]),
        out_slots=torch.tensor(out_slots),
        qo_indptr=torch.tensor(qo),
        kv_indptr=torch.tensor(kv),
        kv_slots=torch.tensor([s for seq in slots for s in seq], dtype=torch.int32),
        seq_lens=seq_lens,
        extend_lens=extend_lens,
        logits_indices=torch.tensor([q - 1 for q in qo[1:]]),
        seq_slots=slots,
        seq_keys=[f"r{i}" for i in range(len(seq_lens))],
        seq_versions=[0] * len(seq_lens),
    )


def test_leading_decodes_and_their_head_batch():
    batch = _mixed_batch()
    assert batch.num_leading_decodes == 3
    head = batch.head(3)
    assert head.is_decode and head.batch_size == 3 and head.num_tokens == 3
    assert head.seq_lens == [5, 9, 3] and head.seq_keys == ["r0", "r1", "r2"] and head.seq_slots == batch.seq_slots[:3]
    assert head.qo_indptr.tolist() == [0, 1, 2, 3] and head.kv_indptr.tolist() == [0, 5, 14, 17]
    assert torch.equal(head.out_slots, batch.out_slots[:3])


def test_the_head_batch_attends_exactly_like_its_rows_of_the_whole_step():
    pool = KVPool(300, 2, HKV, D, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for layer in range(2):
        k, v = torch.randn(2, 300, HKV, D, generator=gen)
        pool.write(layer, torch.arange(300), k, v)
    batch = _mixed_batch()
    q = torch.randn(batch.num_tokens, HQ, D, generator=gen)
    k, v = torch.randn(2, batch.num_tokens, HKV, D, generator=gen)
    whole = TorchNativeBackend(pool)
    whole.prepare(batch)
    want = whole.forward(q, k, v, 1, batch, SCALE)
    head = batch.head(3)
    alone = TorchNativeBackend(pool)
    alone.prepare(head)
    got = alone.forward(q[:3], k[:3], v[:3], 1, head, SCALE)
    torch.testing.assert_close(got, want[:3])


@pytest.mark.parametrize("name, count", [("torch_native", 4), ("triton", 4), ("flashinfer", -2)])
def test_the_mixed_decode_split_flag_is_refused_where_it_cannot_apply(name, count):
    pool = KVPool(8, 1, HKV, D, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="mixed-decode-split"):
        create_backend(name, pool, HQ, mixed_decode_split=count)


@pytest.mark.parametrize("name, want", [("torch_native", 0), ("triton", 0), ("flashinfer", AUTO_MIXED_DECODE_SPLIT)])
def test_the_mixed_decode_split_default_is_on_for_flashinfer_only(name, want):
    assert resolve_mixed_decode_split(name, -1) == want
    assert resolve_mixed_decode_split(name, 0) == 0


@pytest.mark.parametrize("name", ["torch_native", "triton"])
def test_ragged_prefill_is_refused_off_flashinfer(name):
    pool = KVPool(8, 1, HKV, D, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="ragged-prefill"):
        create_backend(name, pool, HQ, ragged_prefill=True)
