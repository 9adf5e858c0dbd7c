"""GPU attention backends against TorchNativeBackend, on mixed batches over scattered slots.

Inputs are bf16 (or fp16/fp32); the reference runs in float32 on the same values through a float32
pool. Each sequence's past K/V (a prefix hit, earlier chunks, a decode's history) is pre-written at
its slots; a step passes only the new tokens, and the backend must find the rest by slot id.
Without CUDA the triton cases run under ``TRITON_INTERPRET=1`` (see conftest.py), on smaller sizes.
"""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass

import pytest
import torch

from radixserve.attention import create_backend
from radixserve.attention.base import ForwardBatch
from radixserve.attention.torch_native import TorchNativeBackend
from radixserve.runner.kv_pool import KVPool

pytestmark = pytest.mark.gpu

NUM_KV_HEADS = 2
LAYER = 1
REL_TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 5e-3}
HAS_CUDA = torch.cuda.is_available()
NO_FLASHINFER = pytest.mark.skipif(
    not HAS_CUDA or importlib.util.find_spec("flashinfer") is None, reason="no flashinfer"
)
# "flashinfer+triton-decode": the flashinfer backend with --triton-decode-max-bs 64, so the small
# decode batches here run the Triton decode kernels and everything else FlashInfer (small_decode.py)
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.triton_interpreter),
    pytest.param("flashinfer", marks=NO_FLASHINFER),
    pytest.param("flashinfer+triton-decode", marks=NO_FLASHINFER),
]


@dataclass
class Sequence:
    slots: list[int]  # [seq_len]
    extend_len: int
    k: torch.Tensor  # [seq_len, Hkv, D], the whole context's keys
    v: torch.Tensor  # [seq_len, Hkv, D]
    q: torch.Tensor  # [extend_len, Hq, D], queries of the new tokens

    @property
    def seq_len(self) -> int:
        return len(self.slots)

    @property
    def past_len(self) -> int:
        return self.seq_len - self.extend_len


@dataclass
class Shape:
    num_q_heads: int
    head_dim: int
    dtype: torch.dtype = torch.bfloat16


def make_sequences(specs, shape: Shape, device, seed: int = 0, shared_len: int = 0) -> list[Sequence]:
    """``specs``: ``(shares_prefix, own_past_len, extend_len)`` per sequence. Sequences that share
    the prefix start with the same ``shared_len`` slots and K/V (a radix-tree hit); every other slot
    is a distinct random slot id (never the dummy slot 0)."""
    gen = torch.Generator().manual_seed(seed)
    total = shared_len + sum(past + extend for _, past, extend in specs)
    free = (torch.randperm(total + 64, generator=gen)[:total] + 1).tolist()
    shared_slots, free = free[:shared_len], free[shared_len:]
    shared_k, shared_v = _randn(gen, shape, shared_len, NUM_KV_HEADS), _randn(gen, shape, shared_len, NUM_KV_HEADS)
    sequences = []
    for shares, past, extend in specs:
        own, free = free[: past + extend], free[past + extend :]
        k, v = _randn(gen, shape, past + extend, NUM_KV_HEADS), _randn(gen, shape, past + extend, NUM_KV_HEADS)
        if shares:
            own, k, v = shared_slots + own, torch.cat([shared_k, k]), torch.cat([shared_v, v])
        q = _randn(gen, shape, extend, shape.num_q_heads)
        sequences.append(Sequence(own, extend, k.to(device), v.to(device), q.to(device)))
    return sequences


def _randn(gen, shape: Shape, rows: int, heads: int) -> torch.Tensor:
    return torch.randn(rows, heads, shape.head_dim, generator=gen).to(shape.dtype)


def make_batch(sequences: list[Sequence], device, index_dtype=torch.int64) -> ForwardBatch:
    out_slots = [slot for s in sequences for slot in s.slots[s.past_len :]]
    return ForwardBatch(
        input_ids=torch.zeros(len(out_slots), dtype=torch.int64, device=device),
        positions=torch.zeros(len(out_slots), dtype=torch.int64, device=device),
        out_slots=torch.tensor(out_slots, dtype=index_dtype, device=device),
        qo_indptr=_indptr([s.extend_len for s in sequences], index_dtype, device),
        kv_indptr=_indptr([s.seq_len for s in sequences], index_dtype, device),
        kv_slots=torch.tensor([slot for s in sequences for slot in s.slots], dtype=index_dtype, device=device),
        seq_lens=[s.seq_len for s in sequences],
        extend_lens=[s.extend_len for s in sequences],
        logits_indices=torch.zeros(0, dtype=torch.int64, device=device),
    )


def _indptr(lengths: list[int], dtype, device) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=dtype, device=device)


def new_tokens(sequences: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's q, k and v as the model passes them: views of one fused qkv projection's rows
    (q's token stride is the whole row's), which a backend must read through their strides."""
    q = torch.cat([s.q for s in sequences])  # [T, Hq, D]
    k = torch.cat([s.k[s.past_len :] for s in sequences])  # [T, Hkv, D]
    v = torch.cat([s.v[s.past_len :] for s in sequences])  # [T, Hkv, D]
    qkv = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)
    q_size, kv_size = q[0].numel(), k[0].numel()
    return (
        qkv[:, :q_size].view_as(q),
        qkv[:, q_size : q_size + kv_size].view_as(k),
        qkv[:, q_size + kv_size :].view_as(v),
    )


def write_past(pool: KVPool, sequences: list[Sequence]) -> None:
    for s in sequences:
        slots = torch.tensor(s.slots[: s.past_len], dtype=torch.int64, device=pool.device)
        pool.write(LAYER, slots, s.k[: s.past_len], s.v[: s.past_len])


def make_pool(sequences: list[Sequence], shape: Shape, device, dtype=None) -> KVPool:
    num_slots = max(slot for s in sequences for slot in s.slots) + 1
    return KVPool(num_slots, LAYER + 1, NUM_KV_HEADS, shape.head_dim, dtype or shape.dtype, device)


def make_backend(name: str, pool: KVPool, num_q_heads: int):
    base, _, variant = name.partition("+")
    try:
        return create_backend(base, pool, num_q_heads, triton_decode_max_bs=64 if variant == "triton-decode" else 0)
    except ValueError as error:
        pytest.skip(f"{name}: {error}")


def reference(sequences: list[Sequence], shape: Shape, device) -> torch.Tensor:  # [T, Hq, D] float32
    pool = make_pool(sequences, shape, device, dtype=torch.float32)
    write_past(pool, sequences)
    backend = TorchNativeBackend(pool)
    batch = make_batch(sequences, device)
    backend.prepare(batch)
    q, k, v = (x.float() for x in new_tokens(sequences))
    return backend.forward(q, k, v, LAYER, batch, shape.head_dim**-0.5)


def check_step(name: str, sequences: list[Sequence], shape: Shape, device, index_dtype=torch.int64) -> None:
    """One step through backend ``name``: its output matches the reference, its KV lands at out_slots."""
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    backend = make_backend(name, pool, shape.num_q_heads)
    batch = make_batch(sequences, device, index_dtype)
    q, k, v = new_tokens(sequences)
    backend.prepare(batch)
    out = backend.forward(q, k, v, LAYER, batch, shape.head_dim**-0.5)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])
    k_pool, v_pool = pool.get(LAYER)
    assert torch.equal(k_pool[batch.out_slots.long()], k) and torch.equal(v_pool[batch.out_slots.long()], v)


def assert_close(out: torch.Tensor, want: torch.Tensor, rel_tol: float) -> None:
    assert torch.isfinite(out).all()
    error = ((out.float() - want).norm() / want.norm()).item()
    assert error <= rel_tol, f"relative error {error:.2e} > {rel_tol:.0e}"


# ---- the scenarios -----------------------------------------------------------------------------

# (shares_prefix, own_past_len, extend_len); the GPU runs the big sizes, the interpreter the small
DECODE = {
    "big": [(False, n - 1, 1) for n in (1, 2, 17, 64, 65, 300, 1000, 1999, 2000, 7, 129, 1500)],
    "small": [(False, n - 1, 1) for n in (1, 2, 65, 300, 2000)],
}
PREFILL = {"big": [(False, 0, n) for n in (1000, 257, 3, 128)], "small": [(False, 0, n) for n in (150, 2, 33)]}
PREFIX_HIT = {  # three sequences over one shared prefix, one of them with more history of its own
    "big": (700, [(True, 0, 300), (True, 45, 129), (True, 0, 2), (False, 0, 77)]),
    "small": (100, [(True, 0, 40), (True, 45, 20), (True, 0, 2)]),
}
MIXED = {  # decodes with and without the shared prefix, an extend over it, a chunk, a prefill
    "big": (300, [(True, 0, 1), (False, 900, 1), (True, 50, 200), (False, 0, 1), (False, 500, 256), (False, 0, 90)]),
    "small": (40, [(True, 0, 1), (False, 90, 1), (True, 10, 30), (False, 0, 1), (False, 60, 20), (False, 0, 9)]),
}


def size(device) -> str:
    return "big" if device.type == "cuda" else "small"


def _skip_uncompiled_flashinfer(backend_name: str, head_dim: int) -> None:
    """FlashInfer JIT-builds one module per (dtype, head_dim), ~100 s each on a fresh GPU machine:
    this suite checks it at head_dim 128 (Llama-3 shapes); the triton backend covers 64 too."""
    if backend_name == "flashinfer" and head_dim != 128:
        pytest.skip("flashinfer checked at head_dim 128 only (JIT build cost)")


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_pure_decode_over_mixed_context_lengths(backend_name, group, head_dim, device):
    _skip_uncompiled_flashinfer(backend_name, head_dim)
    shape = Shape(NUM_KV_HEADS * group, head_dim)
    check_step(backend_name, make_sequences(DECODE[size(device)], shape, device), shape, device)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_from_empty(backend_name, group, head_dim, device):
    _skip_uncompiled_flashinfer(backend_name, head_dim)
    shape = Shape(NUM_KV_HEADS * group, head_dim)
    check_step(backend_name, make_sequences(PREFILL[size(device)], shape, device), shape, device)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_extend_over_a_shared_prefix_hit(backend_name, group, head_dim, device):
    _skip_uncompiled_flashinfer(backend_name, head_dim)
    shape = Shape(NUM_KV_HEADS * group, head_dim)
    shared_len, specs = PREFIX_HIT[size(device)]
    check_step(backend_name, make_sequences(specs, shape, device, shared_len=shared_len), shape, device)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_mixed_decode_and_extend_batch(backend_name, group, head_dim, device):
    _skip_uncompiled_flashinfer(backend_name, head_dim)
    shape = Shape(NUM_KV_HEADS * group, head_dim)
    shared_len, specs = MIXED[size(device)]
    check_step(backend_name, make_sequences(specs, shape, device, shared_len=shared_len), shape, device)


def _decode_step(device, seed: int):
    """A decode step over DECODE's contexts at GQA 4, head_dim 64, its new K/V already in the pool:
    (the triton_decode module, shape, sequences, batch, q, k_pool, v_pool)."""
    triton_kernels = pytest.importorskip("radixserve.attention.triton_kernels", reason="needs triton")
    from radixserve.attention import triton_decode

    shape = Shape(NUM_KV_HEADS * 4, 64)
    sequences = make_sequences(DECODE[size(device)], shape, device, seed=seed)
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    batch = make_batch(sequences, device)
    q, k, v = new_tokens(sequences)
    k_pool, v_pool = pool.get(LAYER)
    triton_kernels.store_kv(k, v, k_pool, v_pool, batch.out_slots)
    return triton_decode, shape, sequences, batch, q, k_pool, v_pool


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("fused_merge", [False, True])
@pytest.mark.parametrize("num_splits", [1, 3, 16, 17, 40, 64])
def test_triton_decode_any_split_count(num_splits, fused_merge, device, monkeypatch):
    """The split-K decode and its merge (which reads the partials 16 at a time, or, fused, the last
    split of each sequence and KV head to finish) agree with the reference for split counts below,
    at and past one chunk, empty splits included; fused, twice over the same counters, which are
    zero after each launch."""
    triton_decode, shape, sequences, batch, q, k_pool, v_pool = _decode_step(device, seed=6)
    counters = torch.zeros(len(sequences) * NUM_KV_HEADS, dtype=torch.int32, device=device) if fused_merge else None
    if fused_merge and num_splits > 1:  # the splits merge themselves: no merge kernel may run
        monkeypatch.setattr(triton_decode, "_decode_merge_kernel", _NoLaunch())
    want = reference(sequences, shape, device)
    for _ in range(2 if fused_merge else 1):
        out = torch.full_like(q, float("nan"))  # a row nobody writes fails
        triton_decode.decode_attention(
            q, k_pool, v_pool, out, batch.qo_indptr, batch.kv_indptr, batch.kv_slots, None, len(sequences),
            num_splits, shape.head_dim**-0.5, counters=counters,
        )  # fmt: skip
        assert_close(out, want, REL_TOL[shape.dtype])
        if fused_merge:
            assert not counters.any()


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("heads_first", [True, None])
@pytest.mark.parametrize("splits, chunk, fused", [(1, 0, False), (3, 0, False), (3, 0, True), (32, 64, True)])
def test_triton_decode_with_heads_first_grid(splits, chunk, fused, heads_first, device, monkeypatch):
    """A sequence's KV heads launched next to each other (grid axes swapped), asked for or (None)
    chosen for a grid of MANY_DECODE_PROGRAMS programs (lowered to 1 here), computes the same: one
    split, even splits merged by the kernel or by themselves, chunks."""
    triton_decode, shape, sequences, batch, q, k_pool, v_pool = _decode_step(device, seed=6)
    monkeypatch.setattr(triton_decode, "MANY_DECODE_PROGRAMS", 1)
    grids = []
    kernel = triton_decode._decode_split_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(triton_decode, "_decode_split_kernel", Spy())
    counters = torch.zeros(len(sequences) * NUM_KV_HEADS, dtype=torch.int32, device=device) if fused else None
    out = torch.full_like(q, float("nan"))
    triton_decode.decode_attention(
        q, k_pool, v_pool, out, batch.qo_indptr, batch.kv_indptr, batch.kv_slots, None, len(sequences), splits,
        shape.head_dim**-0.5, chunk_len=chunk, counters=counters, heads_first=heads_first,
    )  # fmt: skip
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])
    assert counters is None or not counters.any()
    assert [grid[:2] for grid in grids] == [(NUM_KV_HEADS, len(sequences))]


class _NoLaunch:
    """Stands where a kernel must not be launched: indexing it with a grid fails the test."""

    def __getitem__(self, grid):
        raise AssertionError(f"a merge kernel was launched (grid {grid}) where the splits merge themselves")


@pytest.mark.triton_interpreter
def test_triton_decode_counters_too_small_fall_back_to_the_merge_kernel(device):
    """A counter buffer smaller than the batch's sequences x KV heads is not used: the merge kernel
    runs, the output matches, and the buffer is left as it was."""
    triton_decode, shape, sequences, batch, q, k_pool, v_pool = _decode_step(device, seed=6)
    counters = torch.full((len(sequences) * NUM_KV_HEADS - 1,), 7, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"))
    triton_decode.decode_attention(
        q, k_pool, v_pool, out, batch.qo_indptr, batch.kv_indptr, batch.kv_slots, None, len(sequences), 4,
        shape.head_dim**-0.5, counters=counters,
    )  # fmt: skip
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])
    assert bool((counters == 7).all())


@pytest.mark.skipif(not HAS_CUDA, reason="races show only on a GPU")
@pytest.mark.parametrize("chunked", [False, True])
def test_triton_self_merging_decode_under_back_to_back_launches(chunked):
    """Many programs racing for the merge: 100 launches back to back, each with other queries into
    NaN-filled outputs (a merger that read a stale or unwritten partial, or a counter left non-zero,
    shows), against the same launch with the merge kernel."""
    triton_decode = pytest.importorskip("radixserve.attention.triton_decode", reason="needs triton")
    device = torch.device("cuda")
    shape = Shape(NUM_KV_HEADS * 4, 128)
    lengths = [1 + (37 * i) % 1500 for i in range(256)]
    sequences = make_sequences([(False, n - 1, 1) for n in lengths], shape, device, seed=11)
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    batch = make_batch(sequences, device)
    _, k, v = new_tokens(sequences)
    k_pool, v_pool = pool.get(LAYER)
    k_pool[batch.out_slots], v_pool[batch.out_slots] = k, v
    splits, chunk = (4, 512) if chunked else (16, 0)  # chunked: up to 3 chunks a context
    counters = torch.zeros(len(sequences) * NUM_KV_HEADS, dtype=torch.int32, device=device)
    gen = torch.Generator(device=device).manual_seed(12)
    args = (batch.qo_indptr, batch.kv_indptr, batch.kv_slots, None, len(sequences), splits, shape.head_dim**-0.5)
    for _ in range(100):
        q = torch.randn(len(sequences), shape.num_q_heads, shape.head_dim, generator=gen, device=device).to(shape.dtype)
        fused, merged = torch.full_like(q, float("nan")), torch.full_like(q, float("nan"))
        triton_decode.decode_attention(q, k_pool, v_pool, fused, *args, chunk_len=chunk, counters=counters)
        triton_decode.decode_attention(q, k_pool, v_pool, merged, *args, chunk_len=chunk)
        torch.testing.assert_close(fused, merged, rtol=2e-2, atol=2e-2)
    assert not counters.any()


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("merge_heads", [1, 4, 8, "fused"])
@pytest.mark.parametrize("gather", [False, True])
def test_triton_chunked_decode(merge_heads, gather, device, monkeypatch):
    """Chunked decode (every split reads ``chunk_len`` keys): a context of one chunk is written by
    stage 1, a longer one merged several heads a program (or by its last chunk to finish, with
    counters, which are zero again after), whole batch or gathered rows alike."""
    triton_decode, shape, sequences, batch, q, k_pool, v_pool = _decode_step(device, seed=7)
    chunk = 64
    splits = -(-max(s.seq_len for s in sequences) // chunk)
    assert any(s.seq_len <= chunk for s in sequences) and any(s.seq_len > chunk for s in sequences)
    seq_ids = None
    if gather:  # every sequence, listed last first
        seq_ids = torch.arange(len(sequences) - 1, -1, -1, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"))  # a row nobody writes fails
    fused = merge_heads == "fused"
    counters = torch.zeros(len(sequences) * NUM_KV_HEADS, dtype=torch.int32, device=device) if fused else None
    if fused:  # the last chunk to finish merges: no merge kernel may run
        monkeypatch.setattr(triton_decode, "_decode_merge_heads_kernel", _NoLaunch())
    triton_decode.decode_attention(
        q, k_pool, v_pool, out, batch.qo_indptr, batch.kv_indptr, batch.kv_slots, seq_ids, len(sequences), splits,
        shape.head_dim**-0.5, chunk_len=chunk, merge_heads=1 if fused else merge_heads, counters=counters,
    )  # fmt: skip
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])
    assert counters is None or not counters.any()


@pytest.mark.triton_interpreter
def test_triton_captured_chunked_layout_matches_and_guards_long_contexts(monkeypatch, device):
    """A captured step of a batch that fills the card reads contexts in chunks (forced here with
    small chunks): it matches the reference, and a batch with a context past every chunk of the
    layout captured at its padded size asks for an eager step (it would be cut short)."""
    triton_backend = pytest.importorskip("radixserve.attention.triton_backend", reason="needs triton")
    from radixserve.attention import launch_configs

    monkeypatch.setattr(launch_configs, "graph_splits", lambda *args, **kwargs: 1)  # every batch fills the card
    monkeypatch.setattr(launch_configs, "MAX_SPLIT_KEYS", 64)
    monkeypatch.setattr(launch_configs, "CHUNKED_GRAPH_SPLITS", 32)
    shape = Shape(NUM_KV_HEADS * 4, 64)
    sequences = make_sequences(DECODE[size(device)], shape, device, seed=8)
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    backend = triton_backend.TritonBackend(pool, num_kv_splits=32, num_q_heads=shape.num_q_heads)
    batch = make_batch(sequences, device)
    assert not backend.wants_eager(batch)
    backend.prepare_graph(batch)  # as at capture: this size's layout is recorded
    assert backend._plan.chunk_len == 64 and backend._plan.num_splits == 32
    out = backend.forward(*new_tokens(sequences), LAYER, batch, shape.head_dim**-0.5)
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])

    def decode_batch(seq_lens: list[int]) -> ForwardBatch:  # only the lengths matter to the choice
        rows = torch.zeros(len(seq_lens), dtype=torch.int64, device=device)
        indptr = torch.zeros(len(seq_lens) + 1, dtype=torch.int64, device=device)
        return ForwardBatch(rows, rows, rows, indptr, indptr, rows, seq_lens, [1] * len(seq_lens), rows)

    smaller = len(sequences) - 2  # pads to the recorded size
    assert not backend.wants_eager(decode_batch([3] * (smaller - 1) + [32 * 64]))
    assert backend.wants_eager(decode_batch([3] * (smaller - 1) + [32 * 64 + 1]))


@pytest.mark.triton_interpreter
def test_triton_chunked_plan_rebuilds_its_work_list_every_pass(monkeypatch, device):
    """A captured step's plan runs several passes (two warm-ups, then the capture, whose replays
    read new lengths from the same buffers): each pass rebuilds the chunks' work list. Here one plan
    runs a pass, the buffers then take other lengths in place, and a second pass must match them."""
    triton_backend = pytest.importorskip("radixserve.attention.triton_backend", reason="needs triton")
    from radixserve.attention import launch_configs

    monkeypatch.setattr(launch_configs, "graph_splits", lambda *args, **kwargs: 1)  # every batch fills the card
    monkeypatch.setattr(launch_configs, "MAX_SPLIT_KEYS", 64)
    monkeypatch.setattr(launch_configs, "CHUNKED_GRAPH_SPLITS", 32)
    shape = Shape(NUM_KV_HEADS * 4, 64)
    specs = DECODE[size(device)]
    first = make_sequences(specs, shape, device, seed=9)
    offset = max(slot for s in first for slot in s.slots) + 1
    second = [  # the same lengths in reverse order, in slots of their own: other chunk lists
        Sequence([slot + offset for slot in s.slots], s.extend_len, s.k, s.v, s.q)
        for s in make_sequences(specs[::-1], shape, device, seed=10)
    ]
    pool = make_pool(first + second, shape, device)
    write_past(pool, first + second)
    backend = triton_backend.TritonBackend(pool, num_kv_splits=32, num_q_heads=shape.num_q_heads)
    batch = make_batch(first, device)  # the static buffers
    backend.prepare_graph(batch)
    assert backend._plan.chunk_len == 64
    out = backend.forward(*new_tokens(first), LAYER, batch, shape.head_dim**-0.5)
    assert_close(out, reference(first, shape, device), REL_TOL[shape.dtype])
    replayed = make_batch(second, device)
    for static, new in ((batch.kv_indptr, replayed.kv_indptr), (batch.kv_slots, replayed.kv_slots)):
        static.copy_(new)
    batch.out_slots.copy_(replayed.out_slots)
    out = backend.forward(*new_tokens(second), LAYER, batch, shape.head_dim**-0.5)
    assert_close(out, reference(second, shape, device), REL_TOL[shape.dtype])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_warmup_writes_only_the_dummy_slot_and_steps_still_match(backend_name, device):
    """``warmup`` (run at engine start on CUDA) compiles the eager kernels on dummy inputs: it may
    write nothing but the dummy slot 0, and a step after it still matches the reference."""
    shape = Shape(NUM_KV_HEADS * 4, 128 if device.type == "cuda" else 64)
    _skip_uncompiled_flashinfer(backend_name, shape.head_dim)
    shared_len, specs = MIXED[size(device)]
    sequences = make_sequences(specs, shape, device, shared_len=shared_len)
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    before = [buffer[1:].clone() for layer in range(pool.num_layers) for buffer in pool.get(layer)]
    backend = make_backend(backend_name, pool, shape.num_q_heads)
    backend.warmup(shape.num_q_heads)
    after = [buffer[1:] for layer in range(pool.num_layers) for buffer in pool.get(layer)]
    assert all(torch.equal(old, new) for old, new in zip(before, after))
    batch = make_batch(sequences, device)
    backend.prepare(batch)
    out = backend.forward(*new_tokens(sequences), LAYER, batch, shape.head_dim**-0.5)
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])


@pytest.mark.triton_interpreter
def test_large_grids_launch_two_stages_heads_first_and_warmups_know_both_forms(monkeypatch):
    """Tuned (Hopper, 16-bit K/V): a small grid launches three stages, sequences first; from
    MANY_DECODE_PROGRAMS programs on, two stages, heads first, and a chunked grid (a batch that
    fills the card) so at any size; ``launch_forms`` (what the warmups compile) lists exactly the
    even-split forms."""
    from radixserve.attention import triton_decode
    from radixserve.attention.launch_configs import LaunchConfig

    monkeypatch.setattr(triton_decode, "tuned", lambda device, dtype: True)
    many, cpu = triton_decode.MANY_DECODE_PROGRAMS, torch.device("cpu")
    small = triton_decode.launch(128, cpu, torch.bfloat16, many - 1)
    large = triton_decode.launch(128, cpu, torch.bfloat16, many)
    assert small == (LaunchConfig(64, 4, 3), False)
    assert large == (LaunchConfig(64, 4, 2), True)
    assert triton_decode.launch(128, cpu, torch.bfloat16, many, chunked=True) == (LaunchConfig(64, 4, 2), True)
    assert triton_decode.launch_forms(128, cpu, torch.bfloat16) == [small, large]


@pytest.mark.parametrize("many_programs", [8, 1 << 30])
def test_warmup_compiles_what_an_eager_decode_step_launches(many_programs, device, monkeypatch):
    """The decode launches differ from MANY_DECODE_PROGRAMS programs on (stages, grid order):
    after ``warmup`` an eager decode step on either side of it compiles nothing more (a compile
    stalls a step ~1 s; the tenth session's first run of (a) paid it for the large grids)."""
    from radixserve.attention import launch_configs, triton_decode

    for module in (triton_decode, launch_configs):  # the grid order and the stages
        monkeypatch.setattr(module, "MANY_DECODE_PROGRAMS", many_programs)
    shape = Shape(NUM_KV_HEADS * 4, 128)
    sequences = make_sequences(DECODE[size(device)], shape, device, seed=4)
    pool = make_pool(sequences, shape, device)
    write_past(pool, sequences)
    backend = make_backend("triton", pool, shape.num_q_heads)
    kernels = (triton_decode._decode_split_kernel, triton_decode._decode_merge_kernel)
    for kernel in kernels:  # what earlier tests compiled must not stand in for the warmup
        kernel.device_caches.clear()
    backend.warmup(shape.num_q_heads)

    def compiled() -> int:
        return sum(len(cache[0]) for kernel in kernels for cache in kernel.device_caches.values())

    before = compiled()
    batch = make_batch(sequences, device)
    batch.kv_slots = batch.kv_slots.to(torch.int32)  # as the engine's slot table hands them over
    backend.prepare(batch)
    out = backend.forward(*new_tokens(sequences), LAYER, batch, shape.head_dim**-0.5)
    assert_close(out, reference(sequences, shape, device), REL_TOL[shape.dtype])
    assert compiled() == before


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_other_dtypes_and_int32_indices(backend_name, dtype, index_dtype, device):
    if backend_name.startswith("flashinfer"):
        pytest.skip("flashinfer: bf16 only here (each dtype is another ~100 s JIT build on a fresh GPU machine)")
    shape = Shape(NUM_KV_HEADS * 4, 64, dtype)
    shared_len, specs = MIXED[size(device)]
    check_step(backend_name, make_sequences(specs, shape, device, seed=1, shared_len=shared_len), shape, device)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("group, head_dim", [(3, 64), (2, 96), (1, 32), (4, 256)])
def test_triton_odd_groups_and_head_dims(group, head_dim, device):
    shape = Shape(NUM_KV_HEADS * group, head_dim)
    shared_len, specs = MIXED["small"]
    check_step("triton", make_sequences(specs, shape, device, seed=2, shared_len=shared_len), shape, device)
    check_step("triton", make_sequences(DECODE["small"], shape, device, seed=3), shape, device)


# ---- CUDA graphs ------------------------------------------------------------------------------


class StaticDecode:
    """A padded decode batch in static buffers, filled the way runner/cuda_graph.py fills them:
    padding rows write to the dummy slot 0 and attend to the one-slot context ``[0]``."""

    def __init__(self, padded: int, max_context: int, shape: Shape, device):
        self.padded = padded
        self.q = torch.zeros(padded, shape.num_q_heads, shape.head_dim, dtype=shape.dtype, device=device)
        self.k = torch.zeros(padded, NUM_KV_HEADS, shape.head_dim, dtype=shape.dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.out_slots = torch.zeros(padded, dtype=torch.int64, device=device)
        self.qo_indptr = torch.arange(padded + 1, dtype=torch.int64, device=device)
        self.kv_indptr = torch.arange(padded + 1, dtype=torch.int64, device=device)
        self.kv_slots = torch.zeros(max_context + padded, dtype=torch.int32, device=device)

    def batch(self, seq_lens: list[int]) -> ForwardBatch:
        return ForwardBatch(
            input_ids=torch.zeros_like(self.out_slots),
            positions=torch.zeros_like(self.out_slots),
            out_slots=self.out_slots,
            qo_indptr=self.qo_indptr,
            kv_indptr=self.kv_indptr,
            kv_slots=self.kv_slots,
            seq_lens=seq_lens,
            extend_lens=[1] * self.padded,
            logits_indices=self.out_slots,
        )

    def fill(self, sequences: list[Sequence]) -> ForwardBatch:
        real, total = len(sequences), sum(s.seq_len for s in sequences)
        pad = self.padded - real
        batch = make_batch(sequences, self.q.device)
        for static, new in zip((self.q, self.k, self.v), new_tokens(sequences)):
            static.zero_()
            static[:real].copy_(new)
        self.out_slots.zero_()
        self.out_slots[:real].copy_(batch.out_slots)
        self.kv_indptr[: real + 1].copy_(batch.kv_indptr)
        self.kv_indptr[real + 1 :].copy_(torch.arange(1, pad + 1) + total)
        self.kv_slots[:total].copy_(batch.kv_slots)
        self.kv_slots[total : total + pad].zero_()
        return self.batch(batch.seq_lens + [1] * pad)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_decode_graph_replays_match_eager(backend_name, device):
    """Capture one padded decode step (CUDA), replay it over new batches; off CUDA the
    ``prepare_graph`` forward runs directly (the same static-buffer protocol, no graph)."""
    shape = Shape(NUM_KV_HEADS * 4, 128 if device.type == "cuda" else 64)
    lens = DECODE[size(device)]
    rounds = [make_sequences(lens[:3], shape, device, seed=4), make_sequences(lens[1:], shape, device, seed=5)]
    padded = max(len(sequences) for sequences in rounds)
    pool = make_pool(rounds[0] + rounds[1], shape, device)
    backend = make_backend(backend_name, pool, shape.num_q_heads)
    static = StaticDecode(padded, max(sum(s.seq_len for s in sequences) for sequences in rounds), shape, device)
    scale = shape.head_dim**-0.5
    step = static.batch([1] * padded)
    backend.prepare_graph(step)
    out = backend.forward(static.q, static.k, static.v, LAYER, step, scale)  # warm-up: compiles
    graph = torch.cuda.CUDAGraph() if device.type == "cuda" else None
    if graph is not None:
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = backend.forward(static.q, static.k, static.v, LAYER, step, scale)
    for sequences in rounds:
        write_past(pool, sequences)
        backend.prepare_graph(static.fill(sequences))
        if graph is not None:
            graph.replay()
        else:
            out = backend.forward(static.q, static.k, static.v, LAYER, static.batch(step.seq_lens), scale)
        replayed = out[: len(sequences)].clone()
        batch = make_batch(sequences, device)
        backend.prepare(batch)
        eager = backend.forward(*new_tokens(sequences), LAYER, batch, scale)
        assert_close(replayed, eager.float(), 5e-3)
        assert_close(replayed, reference(sequences, shape, device), REL_TOL[shape.dtype])
