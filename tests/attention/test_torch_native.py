"""TorchNativeBackend against a naive dense causal attention, on mixed batches over scattered slots.

Each sequence has "true" K/V for its whole context. Whatever came before this step (a prefix hit,
an earlier chunk, the history of a decode) is pre-written into the pool at its slots; the step
passes only the new tokens' q/k/v, and the backend must find the rest by slot id.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from radixserve.attention import create_backend
from radixserve.attention.base import ForwardBatch
from radixserve.runner.kv_pool import KVPool

NUM_KV_HEADS = 2
HEAD_DIM = 16
NUM_SLOTS = 128
SCALE = HEAD_DIM**-0.5
LAYER = 1


@dataclass
class Sequence:
    seq_len: int
    extend_len: int
    slots: list[int]  # [seq_len]
    k: torch.Tensor  # [seq_len, Hkv, D], the true keys of the whole context
    v: torch.Tensor  # [seq_len, Hkv, D]
    q: torch.Tensor  # [extend_len, Hq, D], queries of the new tokens


def make_sequence(seq_len: int, extend_len: int, slots: list[int], num_q_heads: int, gen) -> Sequence:
    k = torch.randn(seq_len, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(seq_len, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    q = torch.randn(extend_len, num_q_heads, HEAD_DIM, generator=gen)
    return Sequence(seq_len, extend_len, slots, k, v, q)


def naive_attention(sequence: Sequence) -> torch.Tensor:  # [extend_len, Hq, D]
    group = sequence.q.shape[1] // NUM_KV_HEADS
    k = sequence.k.double().repeat_interleave(group, dim=1)  # [seq_len, Hq, D]
    v = sequence.v.double().repeat_interleave(group, dim=1)
    rows = []
    for j in range(sequence.extend_len):
        position = sequence.seq_len - sequence.extend_len + j
        scores = torch.einsum("hd,khd->hk", sequence.q[j].double(), k[: position + 1]) * SCALE  # [Hq, position + 1]
        rows.append(torch.einsum("hk,khd->hd", scores.softmax(-1), v[: position + 1]))
    return torch.stack(rows).float()


def run_step(pool: KVPool, sequences: list[Sequence], q_dtype=torch.float32) -> torch.Tensor:
    """Pre-write each sequence's past K/V, then run one backend step over the new tokens."""
    q, k, v, out_slots, kv_slots = [], [], [], [], []
    for sequence in sequences:
        past = sequence.seq_len - sequence.extend_len
        pool.write(LAYER, torch.tensor(sequence.slots[:past], dtype=torch.int64), sequence.k[:past], sequence.v[:past])
        q.append(sequence.q)
        k.append(sequence.k[past:])
        v.append(sequence.v[past:])
        out_slots += sequence.slots[past:]
        kv_slots += sequence.slots
    batch = ForwardBatch(
        input_ids=torch.zeros(len(out_slots), dtype=torch.int64),
        positions=torch.zeros(len(out_slots), dtype=torch.int64),  # RoPE is the model's business
        out_slots=torch.tensor(out_slots),
        qo_indptr=_indptr([s.extend_len for s in sequences]),
        kv_indptr=_indptr([s.seq_len for s in sequences]),
        kv_slots=torch.tensor(kv_slots),
        seq_lens=[s.seq_len for s in sequences],
        extend_lens=[s.extend_len for s in sequences],
        logits_indices=torch.zeros(0, dtype=torch.int64),
    )
    backend = create_backend("torch_native", pool, num_q_heads=pool.num_kv_heads)
    backend.prepare(batch)
    return backend.forward(torch.cat(q).to(q_dtype), torch.cat(k), torch.cat(v), LAYER, batch, SCALE)


def _indptr(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)


def assert_matches_naive(out: torch.Tensor, sequences: list[Sequence], atol: float = 1e-5) -> None:
    start = 0
    for sequence in sequences:
        expected = naive_attention(sequence)
        torch.testing.assert_close(out[start : start + sequence.extend_len], expected, atol=atol, rtol=atol)
        start += sequence.extend_len


@pytest.mark.parametrize("group", [1, 3, 4])
def test_mixed_batch_prefix_hit_chunk_continuation_and_decodes(group):
    gen = torch.Generator().manual_seed(group)
    num_q_heads = NUM_KV_HEADS * group
    pool = KVPool(NUM_SLOTS, num_layers=2, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, dtype=torch.float32)
    sequences = [
        # a prefix hit: 5 cached tokens at scattered slots, 4 new ones
        make_sequence(9, 4, [40, 3, 17, 29, 8, 50, 51, 52, 53], num_q_heads, gen),
        # decode at context 7
        make_sequence(7, 1, [60, 61, 62, 63, 64, 65, 66], num_q_heads, gen),
        # a second prefill chunk: the first 6 tokens were computed last step
        make_sequence(10, 4, [90, 91, 92, 93, 94, 95, 100, 101, 102, 103], num_q_heads, gen),
        # decode at context 12, slots out of order
        make_sequence(12, 1, [120, 118, 116, 114, 112, 110, 108, 106, 104, 77, 78, 79], num_q_heads, gen),
        # a fresh prefill, no cached prefix
        make_sequence(5, 5, [20, 21, 22, 23, 24], num_q_heads, gen),
        # a one-token prompt decodes like a decode
        make_sequence(1, 1, [30], num_q_heads, gen),
    ]
    out = run_step(pool, sequences)
    assert out.shape == (sum(s.extend_len for s in sequences), num_q_heads, HEAD_DIM)
    assert_matches_naive(out, sequences)
    # the new tokens' K/V landed at their slots
    k_pool, v_pool = pool.get(LAYER)
    assert torch.equal(k_pool[torch.tensor([50, 51, 52, 53])], sequences[0].k[5:])
    assert torch.equal(v_pool[torch.tensor([79])], sequences[3].v[11:])


@pytest.mark.parametrize("seed", range(8))
def test_random_mixed_batches(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    group = rng.choice([1, 3, 4])
    free = rng.sample(range(1, NUM_SLOTS), NUM_SLOTS - 1)
    sequences = []
    for _ in range(rng.randint(1, 6)):
        past_len = rng.randint(0, 12)
        extend_len = rng.choice([1, 1, rng.randint(2, 7)])
        seq_len = past_len + extend_len
        slots, free = free[:seq_len], free[seq_len:]
        sequences.append(make_sequence(seq_len, extend_len, slots, NUM_KV_HEADS * group, gen))
    pool = KVPool(NUM_SLOTS, num_layers=2, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, dtype=torch.float32)
    assert_matches_naive(run_step(pool, sequences), sequences)


def test_only_decodes_with_padding_to_longest():
    gen = torch.Generator().manual_seed(7)
    pool = KVPool(NUM_SLOTS, num_layers=2, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, dtype=torch.float32)
    sequences = [
        make_sequence(2, 1, [5, 6], 8, gen),
        make_sequence(33, 1, list(range(40, 73)), 8, gen),
        make_sequence(9, 1, list(range(100, 109)), 8, gen),
    ]
    assert_matches_naive(run_step(pool, sequences), sequences)


def test_bf16_queries_on_fp32_pool_keep_the_query_dtype():
    gen = torch.Generator().manual_seed(3)
    pool = KVPool(NUM_SLOTS, num_layers=2, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, dtype=torch.float32)
    sequences = [make_sequence(6, 3, [1, 2, 3, 4, 5, 6], 4, gen), make_sequence(4, 1, [7, 8, 9, 10], 4, gen)]
    for sequence in sequences:
        sequence.q = sequence.q.bfloat16().float()  # what the backend will see
    out = run_step(pool, sequences, q_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert_matches_naive(out.float(), sequences, atol=2e-2)


def _sharing(prefix: Sequence, own_lens: list[int], own_slots: list[list[int]], num_q_heads: int, gen):
    """Decoding sequences whose contexts start with ``prefix``'s K/V (same slots, same values)."""
    members = []
    for own_len, slots in zip(own_lens, own_slots):
        own = make_sequence(own_len, 1, slots, num_q_heads, gen)
        k = torch.cat([prefix.k, own.k])
        v = torch.cat([prefix.v, own.v])
        members.append(Sequence(prefix.seq_len + own_len, 1, prefix.slots + slots, k, v, own.q))
    return members


@pytest.mark.parametrize("group", [1, 3, 4])
def test_decodes_sharing_a_prefix_read_it_once_and_match_naive(group):
    """Above MIN_SHARED_PREFIX common slots the backend attends the prefix once per group and merges."""
    from radixserve.attention.torch_native import MIN_SHARED_PREFIX

    gen = torch.Generator().manual_seed(11 + group)
    num_q_heads = NUM_KV_HEADS * group
    pool = KVPool(256, num_layers=2, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, dtype=torch.float32)
    prefix_a = make_sequence(MIN_SHARED_PREFIX + 8, 0, list(range(200, 160, -1)), num_q_heads, gen)
    prefix_b = make_sequence(MIN_SHARED_PREFIX + 3, 0, list(range(1, 1 + MIN_SHARED_PREFIX + 3)), num_q_heads, gen)
    group_a = _sharing(prefix_a, [1, 3, 6], [[100], [101, 102, 103], [104, 105, 106, 107, 108, 109]], num_q_heads, gen)
    group_b = _sharing(prefix_b, [2, 1], [[120, 121], [122]], num_q_heads, gen)
    # shares only 4 slots with group b's prefix: too short to be read as shared
    short = _sharing(
        make_sequence(4, 0, prefix_b.slots[:4], num_q_heads, gen), [3], [[130, 131, 132]], num_q_heads, gen
    )
    short[0].k[:4], short[0].v[:4] = prefix_b.k[:4], prefix_b.v[:4]
    extend = make_sequence(5, 3, [140, 141, 142, 143, 144], num_q_heads, gen)
    for batch in (group_a, group_a + group_b, [group_b[0], extend, *group_a, group_b[1]], group_b + short):
        out = run_step(pool, batch)
        assert_matches_naive(out, batch)
