"""The shared-prefix cascade (triton and flashinfer backends) against their plain decode and
TorchNativeBackend.

A decode step whose sequences start with the same slots (radix-tree hits) runs the cascade when
the batch carries ``seq_slots``/``seq_keys``: the prefix is read once per group tile, each own
suffix on the decode kernel from the shared length, and the parts merged by log-sum-exp. Its output
must match the plain decode of the same step (bf16) and the float32 reference. Without CUDA these
run under ``TRITON_INTERPRET=1`` (see conftest.py) on small sizes and a small ``min_shared_prefix``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("triton", reason="needs triton")

from radixserve.attention import launch_configs, shared_prefix, triton_backend, triton_cascade  # noqa: E402
from radixserve.attention.base import ForwardBatch  # noqa: E402
from radixserve.runner.kv_pool import KVPool  # noqa: E402
from tests.gpu.test_attention_backends import (  # noqa: E402
    LAYER,
    NUM_KV_HEADS,
    REL_TOL,
    Sequence,
    Shape,
    assert_close,
    make_backend,
    make_batch,
    make_pool,
    new_tokens,
    reference,
    write_past,
)

pytestmark = [pytest.mark.gpu, pytest.mark.triton_interpreter]


def make_groups(groups, shape: Shape, device, seed: int = 0) -> list[Sequence]:
    """``groups``: per group ``(base_len, [(prefix_len, own_len), ...])``: each member's context is
    the group's first ``prefix_len <= base_len`` base slots (same ids, same K/V), then ``own_len``
    slots of its own, the last being this step's token. ``base_len == 0``: sequences outside any
    group. Members are interleaved across groups in the batch."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(base + sum(own for _, own in members) for base, members in groups)
    free = (torch.randperm(total + 64, generator=gen)[:total] + 1).tolist()
    columns = []
    for base_len, members in groups:
        base, free = free[:base_len], free[base_len:]
        base_k, base_v = _randn(gen, shape, base_len, NUM_KV_HEADS), _randn(gen, shape, base_len, NUM_KV_HEADS)
        column = []
        for prefix_len, own_len in members:
            own, free = free[:own_len], free[own_len:]
            k = torch.cat([base_k[:prefix_len], _randn(gen, shape, own_len, NUM_KV_HEADS)])
            v = torch.cat([base_v[:prefix_len], _randn(gen, shape, own_len, NUM_KV_HEADS)])
            q = _randn(gen, shape, 1, shape.num_q_heads)
            column.append(Sequence(base[:prefix_len] + own, 1, k.to(device), v.to(device), q.to(device)))
        columns.append(column)
    return [s for row in _interleave(columns) for s in row]


def _interleave(columns):
    for i in range(max(len(c) for c in columns)):
        yield [c[i] for c in columns if i < len(c)]


def _randn(gen, shape: Shape, rows: int, heads: int) -> torch.Tensor:
    return torch.randn(rows, heads, shape.head_dim, generator=gen).to(shape.dtype)


def with_identity(batch, sequences: list[Sequence]):
    batch.seq_slots = [s.slots for s in sequences]
    batch.seq_keys = [f"request-{i}" for i in range(len(sequences))]
    batch.seq_versions = [0] * len(sequences)
    return batch


def cascade_backend(name: str, pool, num_q_heads: int, min_shared_prefix: int, min_saved_bytes: int = 0):
    """Backend ``name`` whose cascade planner uses the given thresholds."""
    if name == "triton":
        return triton_backend.TritonBackend(
            pool, num_q_heads=num_q_heads, min_shared_prefix=min_shared_prefix, min_saved_bytes=min_saved_bytes
        )
    backend = make_backend(name, pool, num_q_heads)
    backend.shared_prefix = shared_prefix.SharedPrefixDecode(pool, num_q_heads, min_shared_prefix, min_saved_bytes)
    return backend


def run_cascade(sequences: list[Sequence], shape: Shape, device, min_shared_prefix: int, name: str = "triton"):
    """One decode step through the cascade and through the plain decode; returns both and the plan."""
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    backend = cascade_backend(name, pool, shape.num_q_heads, min_shared_prefix)
    scale = shape.head_dim**-0.5
    batch = with_identity(make_batch(sequences, device), sequences)
    assert backend.wants_eager(batch)
    backend.prepare(batch)
    plan = backend.step_cascade
    assert plan is not None
    cascade = backend.forward(*new_tokens(sequences), LAYER, batch, scale)
    plain_batch = make_batch(sequences, device)
    assert not backend.wants_eager(plain_batch)
    backend.prepare(plain_batch)
    assert backend.step_cascade is None
    plain = backend.forward(*new_tokens(sequences), LAYER, plain_batch, scale)
    return cascade, plain, plan


def check_cascade(groups, shape: Shape, device, min_shared_prefix: int, seed: int = 0, name: str = "triton"):
    sequences = make_groups(groups, shape, device, seed)
    cascade, plain, plan = run_cascade(sequences, shape, device, min_shared_prefix, name)
    assert cascade.shape == plain.shape and cascade.dtype == shape.dtype
    assert_close(cascade, plain.float(), REL_TOL[shape.dtype])
    assert_close(cascade, reference(sequences, shape, device), REL_TOL[shape.dtype])
    return plan


# (base_len, [(prefix_len, own_len), ...]) per group; base_len 0: ungrouped sequences
SCENARIOS = {
    "big": [
        (2048, [(2048, 256)] * 16),
        (700, [(700, n) for n in (1, 2, 65, 300)]),
        (1300, [(1300, 5), (900, 40), (1300, 129)]),  # members share 900 or 1300: 900 is used
        (0, [(0, n) for n in (1, 64, 1999, 300)]),
    ],
    "small": [
        (70, [(70, 3), (70, 20), (70, 1)]),
        (40, [(40, 9), (40, 2)]),
        (100, [(100, 4), (80, 30), (100, 12)]),  # members share 80 or 100: 80 is used
        (0, [(0, n) for n in (1, 30, 90)]),
    ],
}


def size(device) -> tuple[str, int]:
    return ("big", 256) if device.type == "cuda" else ("small", 16)


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cascade_matches_plain_decode_and_reference(group, head_dim, device):
    name, min_shared = size(device)
    shape = Shape(NUM_KV_HEADS * group, head_dim)
    plan = check_cascade(SCENARIOS[name], shape, device, min_shared)
    assert plan.num_tiles >= 3
    shared = plan.shared_lens.tolist()
    assert sorted(set(shared)) == ([0, 700, 900, 2048] if name == "big" else [0, 40, 70, 80])


@pytest.mark.parametrize("group", [1, 4, 8])
def test_flashinfer_backend_runs_the_cascade_too(group, device):
    """The default CUDA backend plans and runs the same cascade for shared-prefix decode steps
    (its BatchDecode would read every prefix once per request), matching its own plain decode."""
    if device.type != "cuda" or importlib.util.find_spec("flashinfer") is None:
        pytest.skip("needs CUDA and flashinfer")
    name, min_shared = size(device)
    shape = Shape(NUM_KV_HEADS * group, 128)  # the head_dim whose FlashInfer modules are built
    plan = check_cascade(SCENARIOS[name], shape, device, min_shared, name="flashinfer")
    assert sorted(set(plan.shared_lens.tolist())) == [0, 700, 900, 2048]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cascade_other_dtypes(dtype, device):
    name, min_shared = size(device)
    check_cascade(SCENARIOS[name], Shape(NUM_KV_HEADS * 4, 64, dtype), device, min_shared, seed=1)


def test_many_splits_and_groups_bigger_than_a_tile(monkeypatch, device):
    """Small split minimums force several prefix and suffix splits (some of them empty), a small
    tile forces a group across tiles: the parts still merge to the same output."""
    monkeypatch.setattr(triton_cascade, "MAX_TILE_ROWS", 16)  # 4 members per tile at GQA 4
    monkeypatch.setattr(shared_prefix, "MIN_PREFIX_SPLIT_LEN", 16)
    monkeypatch.setattr(launch_configs, "MIN_SPLIT_LEN", 16)
    groups = [(130, [(130, n) for n in (1, 9, 40, 2, 70, 3)]), (0, [(0, 50)])]
    plan = check_cascade(groups, Shape(NUM_KV_HEADS * 4, 64), device, min_shared_prefix=16, seed=2)
    assert plan.num_tiles == 2 and plan.max_members == 3
    assert plan.num_prefix_splits > 1 and plan.num_suffix_splits > 1


@pytest.mark.parametrize("heads", [2, 4, 16])
def test_merge_of_several_heads_per_program(heads, monkeypatch, device):
    """At large batches the merge takes several heads per program (``merge_heads_per_program``);
    forced here on the usual scenario, including more heads per program than the model has (8)."""
    monkeypatch.setattr(triton_cascade, "merge_heads_per_program", lambda *_: heads)
    name, min_shared = size(device)
    plan = check_cascade(SCENARIOS[name], Shape(NUM_KV_HEADS * 4, 64), device, min_shared, seed=4)
    assert plan.merge_heads == heads


def test_heads_per_merge_program_keep_the_device_busy():
    pick = triton_cascade.merge_heads_per_program
    assert pick(1024, 32, 264) == 32  # 1,024 programs instead of 32,768
    assert pick(128, 32, 264) == 4  # 1,024 programs
    assert pick(16, 32, 264) == 1  # 512 programs: one per (sequence, head), as before
    assert pick(4096, 8, 264) == 8  # never more than the heads there are


@pytest.mark.parametrize("group, head_dim", [(3, 96), (2, 256)])
def test_odd_gqa_groups_and_head_dims(group, head_dim, device):
    name, min_shared = size(device)
    check_cascade(SCENARIOS[name][:2], Shape(NUM_KV_HEADS * group, head_dim), device, min_shared, seed=3)


def test_no_cascade_when_nothing_pays(device):
    _, min_shared = size(device)
    shape = Shape(NUM_KV_HEADS * 4, 64)
    short = min_shared - 1
    sequences = make_groups([(short, [(short, 1), (short, 4)])], shape, device)
    pool = make_pool(sequences, shape, device)
    batch = with_identity(make_batch(sequences, device), sequences)
    too_short = triton_backend.TritonBackend(
        pool, num_q_heads=shape.num_q_heads, min_shared_prefix=min_shared, min_saved_bytes=0
    )
    assert not too_short.wants_eager(batch)
    shared_len = 2 * min_shared
    sequences = make_groups([(shared_len, [(shared_len, 2)] * 2)], shape, device)
    pool = make_pool(sequences, shape, device)
    batch = with_identity(make_batch(sequences, device), sequences)
    row_bytes = 2 * NUM_KV_HEADS * shape.head_dim * 2
    pays = triton_backend.TritonBackend(
        pool, num_q_heads=shape.num_q_heads, min_shared_prefix=min_shared, min_saved_bytes=shared_len * row_bytes
    )
    assert pays.wants_eager(batch)
    costly = triton_backend.TritonBackend(
        pool, num_q_heads=shape.num_q_heads, min_shared_prefix=min_shared, min_saved_bytes=shared_len * row_bytes + 1
    )
    assert not costly.wants_eager(batch)


def test_a_skewed_decode_batch_is_not_replayed_from_a_graph(device):
    """A captured step splits each context a fixed number of ways (``launch_configs.graph_splits``):
    a long context among short ones would leave its few programs streaming long after the rest, so
    the backend asks for an eager step, which splits for the longest context; an even batch replays."""
    pool = KVPool(8, LAYER + 1, NUM_KV_HEADS, 64, torch.bfloat16, device)
    backend = triton_backend.TritonBackend(pool, num_q_heads=NUM_KV_HEADS * 4)
    longest = (launch_configs.MAX_SPLIT_KEYS + 1) * backend._graph_layout(32).splits

    def decode_batch(seq_lens: list[int]) -> ForwardBatch:  # only the lengths matter to the choice
        rows = torch.zeros(len(seq_lens), dtype=torch.int64, device=device)
        indptr = torch.zeros(len(seq_lens) + 1, dtype=torch.int64, device=device)
        return ForwardBatch(rows, rows, rows, indptr, indptr, rows, seq_lens, [1] * len(seq_lens), rows)

    assert backend.wants_eager(decode_batch([64] * 31 + [longest]))
    assert not backend.wants_eager(decode_batch([longest] * 32))
    assert not backend.wants_eager(decode_batch([64] * 32))


@pytest.mark.parametrize("plain_splits", [1, 2])
def test_the_hopper_launches_give_the_same_output(plain_splits, monkeypatch, device):
    """The launches tuned on an H200 (``launch_configs``: 128-key prefix blocks at 64 query rows,
    32-key suffix blocks in 4 stages, 3-stage plain decode) apply only on Hopper with 16-bit K/V;
    forced on here on any device, the cascade (a 16-member group at GQA 4: 64 rows) and the plain
    decode still match the reference."""
    from radixserve.attention import triton_decode

    monkeypatch.setattr(triton_decode, "tuned", lambda device, dtype: True)
    monkeypatch.setattr(triton_cascade, "tuned", lambda device, dtype: True)
    monkeypatch.setattr(launch_configs, "MIN_SPLIT_LEN", 256 // plain_splits)  # one or two suffix splits
    base = 300 if device.type == "cuda" else 140
    groups = [(base, [(base, 1 + 9 * i) for i in range(16)]), (0, [(0, n) for n in (1, 50)])]
    plan = check_cascade(groups, Shape(NUM_KV_HEADS * 4, 128), device, min_shared_prefix=16, seed=5)
    assert plan.block_m == 64
    assert launch_configs.prefix_config(plan.block_m, 128, True) == launch_configs.LaunchConfig(128, 4, 1)
