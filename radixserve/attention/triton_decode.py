"""The Triton decode: flash-decoding, one query row per sequence, over the paged pool (the layout
and conventions of ``triton_kernels.py``).

Stage 1, grid ``(sequence, kv head, split)``, runs every query head of one KV head group over one
slice of the context (K/V loaded once for the group) and writes a partial output and its
log-sum-exp; stage 2, grid ``(sequence, q head)``, merges the splits. A context that one split
reads whole (one split, or a chunked decode's short context) is written by stage 1 directly. With
``counters``, the last split of a sequence and KV head to finish merges them itself (no stage 2). A chunked decode (every split a fixed number of keys) launches stage 1 as
``(sequence, kv head)``: each program reads its context's first chunk, then later chunks of any
context from a work list built on the device (``chunk_work``); its merge takes several heads per
program. Every shape depends only on the batch size and the split count, and lengths are read
from ``kv_indptr`` on the device, so a decode step can be captured in a CUDA graph. ``decode_partials`` is stage 1 alone, optionally from a
per-sequence first position (the shared-prefix cascade of ``triton_cascade.py`` merges it).
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from radixserve.attention.launch_configs import MANY_DECODE_PROGRAMS, LaunchConfig, decode_config, tuned
from radixserve.attention.triton_kernels import (
    LOG2_E,
    exact_dot,
    heads_lse_max,
    heads_weighted,
    lse_max,
    weighted_partials,
)
from radixserve.kernels import pdl
from radixserve.kernels.grid_dependency import gdc_launch_dependents, gdc_wait  # under ``if PDL:`` only

MERGE_CHUNK = 16  # split partials a merge reads at a time (any split count: one compiled variant)


@triton.jit(do_not_specialize=["num_seqs", "num_splits", "chunk_len"])  # one compiled variant whatever the counts
def _decode_split_kernel(
    q_ptr,  # [T, Hq, D]
    k_pool_ptr,  # [num_slots, Hkv, D]
    v_pool_ptr,  # [num_slots, Hkv, D]
    qo_indptr_ptr,  # [B + 1]
    kv_indptr_ptr,  # [B + 1]
    kv_slots_ptr,  # [sum(seq_lens)]
    seq_ids_ptr,  # [num_seqs], read only when GATHER
    kv_offsets_ptr,  # [B] first context position to attend, read only when HAS_OFFSET
    work_ptr,  # CHUNKED: the work list (``chunk_work``)
    counters_ptr,  # FUSED_MERGE: [>= num_seqs * Hkv] int32, zero between launches
    part_out_ptr,  # [num_seqs, Hq, num_splits, D] float32
    part_lse_ptr,  # [num_seqs, Hq, num_splits] float32, base 2
    out_ptr,  # [T, Hq, D], written only when HAS_OUT
    scale_log2,
    stride_q_token,
    stride_q_head,
    stride_pool_slot,
    stride_pool_head,
    stride_out_token,
    stride_out_head,
    num_seqs,
    num_splits,
    chunk_len,  # CHUNKED: every split reads this many keys (a multiple of BLOCK_N)
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GATHER: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
    USE_DOT: tl.constexpr,
    HAS_OUT: tl.constexpr,  # a context read whole by split 0 (see ``_direct``) is written to out, not merged
    CHUNKED: tl.constexpr,  # grid (num_seqs, Hkv): chunks from the work list; else (num_seqs, Hkv, num_splits), even splits
    FUSED_MERGE: tl.constexpr,  # the last split of a (sequence, KV head) to finish merges them (no stage 2)
    HEADS_FIRST: tl.constexpr,  # grid axes 0 and 1 swapped: a sequence's KV heads are launched together
    MERGE_G: tl.constexpr,  # FUSED_MERGE: the GQA group rounded up to a power of two
    MERGE_S: tl.constexpr,  # FUSED_MERGE: splits merged a load (``MERGE_TILE``)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (``radixserve.kernels.pdl``)
):
    if PDL:
        gdc_wait()
    if HEADS_FIRST:
        kv_head = tl.program_id(0)
        own = tl.program_id(1)
    else:
        own = tl.program_id(0)
        kv_head = tl.program_id(1)
    if CHUNKED:
        # the program's own context's first chunk (entry < 0), then the work list's later chunks (of
        # any context) own, own + num_seqs, ...: no program is launched for a chunk past a context's
        # end. One call site: with the first chunk read before the loop the kernel took 164 registers
        # a thread in two stages (three programs an SM), now 125 (four; sm_90, ``cuobjdump
        # --dump-resource-usage``). In three stages 159 and 162: a batch-768 step took 8.41 and 8.43 ms.
        work_len = num_seqs * (num_splits - 1)
        for entry in range(own - num_seqs, tl.load(work_ptr + 2 * work_len), num_seqs):
            listed = tl.maximum(entry, 0)
            _decode_split(
                tl.where(entry < 0, own, tl.load(work_ptr + listed)), kv_head,
                tl.where(entry < 0, 0, tl.load(work_ptr + work_len + listed)), q_ptr, k_pool_ptr,
                v_pool_ptr, qo_indptr_ptr, kv_indptr_ptr, kv_slots_ptr, seq_ids_ptr, kv_offsets_ptr, counters_ptr,
                part_out_ptr, part_lse_ptr, out_ptr, scale_log2, stride_q_token, stride_q_head, stride_pool_slot,
                stride_pool_head, stride_out_token, stride_out_head, num_splits, chunk_len, NUM_Q_HEADS, GROUP,
                BLOCK_G, HEAD_DIM, BLOCK_D, BLOCK_N, GATHER, HAS_OFFSET, USE_DOT, HAS_OUT, FUSED_MERGE, MERGE_G,
                MERGE_S,
            )  # fmt: skip
    else:
        _decode_split(
            own, kv_head, tl.program_id(2), q_ptr, k_pool_ptr, v_pool_ptr, qo_indptr_ptr, kv_indptr_ptr,
            kv_slots_ptr, seq_ids_ptr, kv_offsets_ptr, counters_ptr, part_out_ptr, part_lse_ptr, out_ptr, scale_log2,
            stride_q_token, stride_q_head, stride_pool_slot, stride_pool_head, stride_out_token, stride_out_head,
            num_splits, 0, NUM_Q_HEADS, GROUP, BLOCK_G, HEAD_DIM, BLOCK_D, BLOCK_N, GATHER, HAS_OFFSET, USE_DOT,
            HAS_OUT, FUSED_MERGE, MERGE_G, MERGE_S,
        )  # fmt: skip
    if PDL:
        gdc_launch_dependents()


@triton.jit
def _decode_split(
    index, kv_head, split, q_ptr, k_pool_ptr, v_pool_ptr, qo_indptr_ptr, kv_indptr_ptr, kv_slots_ptr, seq_ids_ptr,
    kv_offsets_ptr, counters_ptr, part_out_ptr, part_lse_ptr, out_ptr, scale_log2, stride_q_token, stride_q_head,
    stride_pool_slot, stride_pool_head, stride_out_token, stride_out_head, num_splits,
    chunk_len,  # > 0: this split reads keys split * chunk_len onwards; 0: the splits share the context evenly
    NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, GATHER: tl.constexpr, HAS_OFFSET: tl.constexpr,
    USE_DOT: tl.constexpr, HAS_OUT: tl.constexpr, FUSED_MERGE: tl.constexpr, MERGE_G: tl.constexpr,
    MERGE_S: tl.constexpr,
):  # fmt: skip
    """One split of decode ``index``'s context for the query heads of ``kv_head``: its partial
    output and log-sum-exp, or (``HAS_OUT``, a context split 0 reads whole) its output. With
    ``FUSED_MERGE`` the last split of the context to finish merges the partials into the output."""
    seq = tl.load(seq_ids_ptr + index) if GATHER else index
    row = tl.load(qo_indptr_ptr + seq).to(tl.int64)
    kv_start = tl.load(kv_indptr_ptr + seq).to(tl.int64)
    seq_len = (tl.load(kv_indptr_ptr + seq + 1) - kv_start).to(tl.int32)
    offset = tl.load(kv_offsets_ptr + seq).to(tl.int32) if HAS_OFFSET else 0
    # this split's slice of context positions offset..seq_len, a whole number of KV blocks long
    keys = seq_len - offset
    even_len = ((keys + num_splits - 1) // num_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    split_len = tl.where(chunk_len > 0, chunk_len, even_len)
    lo = offset + split * split_len
    hi = tl.minimum(lo + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q_offs = row * stride_q_token + heads[:, None] * stride_q_head + offs_d[None, :]
    q = tl.load(q_ptr + q_offs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]
    if USE_DOT:
        q = q.to(k_pool_ptr.dtype.element_ty)
    else:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n_mask = start + offs_n < hi
        slots = tl.load(kv_slots_ptr + kv_start + start + offs_n, mask=n_mask, other=0).to(tl.int64)
        kv_offs = slots[:, None] * stride_pool_slot + kv_head * stride_pool_head + offs_d[None, :]
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_pool_ptr + kv_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if USE_DOT:
            scores = exact_dot(q, tl.trans(k))  # [BLOCK_G, BLOCK_N]
        else:  # BLOCK_G == 1
            scores = tl.sum(q * k.to(tl.float32), 1)[None, :]
        scores = tl.where(n_mask[None, :], scores * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_pool_ptr + kv_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if USE_DOT:
            acc = acc * alpha[:, None] + exact_dot(p.to(v.dtype), v)
        else:
            acc = acc * alpha[:, None] + tl.sum(tl.trans(p) * v.to(tl.float32), 0)[None, :]
        m_i = m_new

    # an empty split (context shorter than the split count allows) weighs nothing in the merge
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    partial = True
    if HAS_OUT:
        direct = _direct(keys, split_len, num_splits, chunk_len)
        out_offs = row * stride_out_token + heads[:, None] * stride_out_head + offs_d[None, :]
        out_mask = g_mask[:, None] & d_mask[None, :] & direct & (split == 0)
        tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
        partial = ~direct
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    part = (index * NUM_Q_HEADS + heads).to(tl.int64) * num_splits + split  # [BLOCK_G]
    tl.store(part_lse_ptr + part, lse, mask=g_mask & partial)
    part_offs = part[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(part_out_ptr + part_offs, out, mask=g_mask[:, None] & d_mask[None, :] & partial)
    if FUSED_MERGE:
        # the splits this context has: every one when even, the chunks it fills when chunked
        count = tl.where(chunk_len > 0, tl.minimum((keys + split_len - 1) // split_len, num_splits), num_splits)
        if partial:
            # this program's partials are stored, by all its threads, before it takes a ticket; the
            # ticket (acq_rel, GPU scope) makes every other split's partials visible to the last one
            tl.debug_barrier()
            counter = counters_ptr + index * (NUM_Q_HEADS // GROUP) + kv_head
            ticket = tl.atomic_add(counter, 1)
            if ticket == count - 1:
                _merge_group(
                    index, kv_head, count, num_splits, part_out_ptr, part_lse_ptr, out_ptr, row, stride_out_token,
                    stride_out_head, NUM_Q_HEADS, GROUP, MERGE_G, MERGE_S, HEAD_DIM, BLOCK_D,
                )  # fmt: skip
                tl.atomic_xchg(counter, 0)  # zero again for the next launch


# the self-merging decode's merge tile, [MERGE_G, MERGE_S, BLOCK_D] float32, holds at most this many
# values: 32 registers a thread at 4 warps, so the split kernel (whose registers it shares) keeps
# its occupancy; 8 splits a load at GQA 4 and head_dim 128
MERGE_TILE = 4096


@triton.jit
def _merge_group(
    index, kv_head, count, num_splits, part_out_ptr, part_lse_ptr, out_ptr, row, stride_out_token, stride_out_head,
    NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, MERGE_G: tl.constexpr, MERGE_S: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Merges the first ``count`` partials (of ``num_splits`` slots) of the query heads of ``kv_head``
    of decode ``index`` into its output row ``row``. The partials were written by other programs:
    read through L2 (``.cg``), never from a stale L1 line of an earlier launch. Every head's
    partials are read ``MERGE_S`` splits at a time in one load with a running maximum: this program
    ends the launch's critical path, and a split at a time (a load round trip each) took a batch-1
    layer of 16 splits from 7.1 to 11.3 us on an H200."""
    offs_g = tl.arange(0, MERGE_G)
    offs_s = tl.arange(0, MERGE_S)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    base = (index * NUM_Q_HEADS + heads).to(tl.int64) * num_splits  # [MERGE_G]
    best = tl.full([MERGE_G], float("-inf"), tl.float32)
    total = tl.zeros([MERGE_G, BLOCK_D], tl.float32)
    weight = tl.zeros([MERGE_G], tl.float32)
    for start in range(0, count, MERGE_S):
        splits = start + offs_s
        gs_mask = g_mask[:, None] & (splits < count)[None, :]
        parts = base[:, None] + splits[None, :]  # [MERGE_G, MERGE_S]
        lse = tl.load(part_lse_ptr + parts, mask=gs_mask, other=float("-inf"), cache_modifier=".cg")
        rows = tl.load(
            part_out_ptr + parts[:, :, None] * HEAD_DIM + offs_d[None, None, :],
            mask=gs_mask[:, :, None] & d_mask[None, None, :], other=0.0, cache_modifier=".cg",
        )  # fmt: skip
        # split 0 holds keys, so every real head's maximum is finite from the first load on; padded
        # heads stay at 0
        new_best = tl.where(g_mask, tl.maximum(best, tl.max(lse, 1)), 0.0)
        alpha = tl.exp2(best - new_best)
        w = tl.exp2(lse - new_best[:, None])  # [MERGE_G, MERGE_S], 0 for splits past count
        total = total * alpha[:, None] + tl.sum(w[:, :, None] * rows, 1)
        weight = weight * alpha + tl.sum(w, 1)
        best = new_best
    out_offs = row * stride_out_token + heads[:, None] * stride_out_head + offs_d[None, :]
    out = total / tl.where(g_mask, weight, 1.0)[:, None]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["num_seqs", "num_splits", "chunk_len"])
def _chunk_work_kernel(
    kv_indptr_ptr,  # [B + 1]
    seq_ids_ptr,  # [num_seqs], read only when GATHER
    work_ptr,  # [2 * num_seqs * (num_splits - 1) + 1] out (``chunk_work``)
    num_seqs,
    num_splits,
    chunk_len,
    BLOCK: tl.constexpr,
    GATHER: tl.constexpr,
):
    """The work list of a chunked decode, one program: every chunk past the first of each context
    (at most ``num_splits`` chunks a context), decode by decode."""
    index = tl.arange(0, BLOCK)
    mask = index < num_seqs
    seq = tl.load(seq_ids_ptr + index, mask=mask, other=0) if GATHER else index
    keys = (tl.load(kv_indptr_ptr + seq + 1, mask=mask, other=0) - tl.load(kv_indptr_ptr + seq, mask=mask, other=0)).to(
        tl.int32
    )
    later = tl.where(mask, tl.minimum((keys + chunk_len - 1) // chunk_len, num_splits) - 1, 0)
    later = tl.maximum(later, 0)
    first = tl.cumsum(later, 0) - later
    work_len = num_seqs * (num_splits - 1)
    for split in range(1, num_splits):
        has = later >= split
        tl.store(work_ptr + first + split - 1, index, mask=has)
        tl.store(work_ptr + work_len + first + split - 1, tl.zeros_like(index) + split, mask=has)
    tl.store(work_ptr + 2 * work_len, tl.sum(later, 0))


@triton.jit
def _direct(keys, split_len, num_splits, chunk_len):
    """Whether split 0 reads a context whole and writes its output itself (no merge): always at one
    split; when chunked, a context of at most one chunk. (Evenly split contexts are all merged.)"""
    return (keys <= split_len) & ((num_splits == 1) | (chunk_len > 0))


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(
    part_out_ptr,  # [num_seqs, Hq, num_splits, D] float32
    part_lse_ptr,  # [num_seqs, Hq, num_splits] float32
    out_ptr,  # [T, Hq, D]
    qo_indptr_ptr,
    seq_ids_ptr,
    stride_out_token,
    stride_out_head,
    num_splits,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr,
    GATHER: tl.constexpr,
):
    index = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.load(seq_ids_ptr + index) if GATHER else index
    row = tl.load(qo_indptr_ptr + seq).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    base = (index * NUM_Q_HEADS + head).to(tl.int64) * num_splits
    # split 0 always holds a key: the max is finite
    best = tl.max(lse_max(part_lse_ptr, base, num_splits, tl.full([CHUNK], float("-inf"), tl.float32), CHUNK), 0)
    total, weight = weighted_partials(
        part_lse_ptr, part_out_ptr, base, num_splits, best,
        tl.zeros([CHUNK, BLOCK_D], tl.float32), tl.zeros([CHUNK], tl.float32), offs_d, d_mask, HEAD_DIM, CHUNK,
    )  # fmt: skip
    out = tl.sum(total, 0) / tl.sum(weight, 0)  # [BLOCK_D]
    out_offs = row * stride_out_token + head * stride_out_head + offs_d
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=d_mask)


@triton.jit(do_not_specialize=["num_splits", "chunk_len"])
def _decode_merge_heads_kernel(
    part_out_ptr,  # [num_seqs, Hq, num_splits, D] float32
    part_lse_ptr,  # [num_seqs, Hq, num_splits] float32
    out_ptr,  # [T, Hq, D]
    qo_indptr_ptr,
    kv_indptr_ptr,
    seq_ids_ptr,
    stride_out_token,
    stride_out_head,
    num_splits,
    chunk_len,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    GATHER: tl.constexpr,
):
    """The merge of a chunked decode (every split ``chunk_len`` keys), ``BLOCK_H`` heads of a
    sequence per program, over the splits its context fills. A context of one chunk was written by
    stage 1: its program stores nothing. (At large batches a program per sequence and head does too
    little to pay for itself: 24,576 of them took 83 us a layer at batch 768 on an H200.)"""
    index = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    seq = tl.load(seq_ids_ptr + index) if GATHER else index
    kv_start = tl.load(kv_indptr_ptr + seq)
    keys = (tl.load(kv_indptr_ptr + seq + 1) - kv_start).to(tl.int32)
    count = (keys + chunk_len - 1) // chunk_len
    count = tl.where(count > 1, tl.minimum(count, num_splits), 0)
    h_mask = heads < NUM_Q_HEADS
    offs_d = tl.arange(0, BLOCK_D)
    mask = h_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    base = (index * NUM_Q_HEADS + heads).to(tl.int64) * num_splits
    best = heads_lse_max(part_lse_ptr, base, count, h_mask, tl.full([BLOCK_H], float("-inf"), dtype=tl.float32))
    total = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    weight = tl.zeros([BLOCK_H], dtype=tl.float32)
    total, weight = heads_weighted(
        part_lse_ptr, part_out_ptr, base, count, best, total, weight, offs_d, h_mask, mask, HEAD_DIM
    )
    out = total / tl.where(count > 0, weight, 1.0)[:, None]
    row = tl.load(qo_indptr_ptr + seq).to(tl.int64)
    out_offs = row * stride_out_token + heads[:, None] * stride_out_head + offs_d[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask & (count > 0))


def launch(
    head_dim: int, device: torch.device, kv_dtype: torch.dtype, programs: int, chunked: bool = False
) -> tuple[LaunchConfig, bool]:
    """How a decode grid of ``programs`` programs launches: its config, and whether a sequence's
    KV heads are launched next to each other. From MANY_DECODE_PROGRAMS on they are (sharing the
    sequence's slot-list reads): each large layer measured ran 2-5% faster, 768 x 256 / 768 x 512 /
    256 x 1,024 in 200 / 387 / 249 us against 210 / 395 / 255 (one split), 216 / 396 / 271 against
    220 / 410 / 280 (chunked; H200, ``bench.cascade_kernels --parts large``). A chunked grid (a
    batch that fills the card) launches two stages too, since its kernel has one call site (125
    registers a thread in two stages, four programs an SM): 211.0 / 390.6 / 255.9 us against 213.8
    / 393.8 / 272.7 in three (eleventh session; with two call sites, 164 registers, two stages had
    been 8-10% slower)."""
    config = decode_config(head_dim, tuned(device, kv_dtype), programs, chunked)
    return config, programs >= MANY_DECODE_PROGRAMS


def launch_forms(head_dim: int, device: torch.device, kv_dtype: torch.dtype) -> list[tuple[LaunchConfig, bool]]:
    """The two ways an even-split decode launches (``launch``), for small grids and large ones.
    Each compiles its own variants, so a warmup launches both (a compile stalls a step ~1 s)."""
    return [launch(head_dim, device, kv_dtype, programs) for programs in (0, MANY_DECODE_PROGRAMS)]


def warmup(
    q, k_pool, v_pool, out, qo_indptr, kv_indptr, kv_slots,
    rows=((None, 2),),  # (seq_ids, num_seqs) launches: whole batch, and gathered rows where given
    counters: torch.Tensor | None = None,  # given: the self-merging variants too
) -> None:  # fmt: skip
    """Compiles, on a dummy step's tensors, every even-split decode an eager step of these shapes
    can launch: both launch forms (``launch_forms``), one split (written directly), two merged by
    the merge kernel and, with ``counters``, two merged by themselves."""
    merges = [(2, None)] + ([(2, counters)] if counters is not None else [])
    forms = launch_forms(q.shape[2], q.device, k_pool.dtype)
    for (config, heads_first), (ids, num_seqs) in itertools.product(forms, rows):
        for splits, merge_counters in [(1, None), *merges]:
            decode_attention(
                q, k_pool, v_pool, out, qo_indptr, kv_indptr, kv_slots, ids, num_seqs, splits, 1.0, config=config,
                counters=merge_counters, heads_first=heads_first,
            )  # fmt: skip


def decode_attention(
    q: torch.Tensor,  # [T, Hq, D], last dim contiguous
    k_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    v_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    out: torch.Tensor,  # [T, Hq, D]; the query row of every listed sequence is written
    qo_indptr: torch.Tensor,  # [B + 1]
    kv_indptr: torch.Tensor,  # [B + 1]
    kv_slots: torch.Tensor,
    seq_ids: torch.Tensor | None,  # [num_seqs] decoding sequences; None: sequences 0..num_seqs-1
    num_seqs: int,
    num_splits: int,
    scale: float,
    config: LaunchConfig | None = None,  # stage 1's launch; default: ``launch_configs.decode_config``
    chunk_len: int = 0,
    merge_heads: int = 1,
    work: torch.Tensor | None = None,  # chunked: ``chunk_work``'s list for these lengths (built here if None)
    counters: torch.Tensor | None = None,  # int32, zero: lets even splits merge themselves (see below)
    heads_first: bool | None = None,  # launch a sequence's KV heads next to each other; None: on large grids
) -> None:
    """Attention of one query row per sequence over its whole context.

    ``chunk_len`` 0: each context is split ``num_splits`` ways evenly, then merged (one split writes
    ``out`` in stage 1 and skips the merge: the merge cost 83 us a layer at batch 768 on an H200).
    ``chunk_len`` > 0 (a multiple of the launch's ``block_n``): each split reads ``chunk_len``
    keys, so a short context is one split, written by stage 1, and only longer ones are merged,
    ``merge_heads`` heads a program. Every context must then fit ``num_splits * chunk_len`` keys
    (the caller's check: the lengths are on the device). A chunked launch is a program per decode and
    KV head, each reading its context's first chunk and then later chunks from the work list: no
    program is spent on a chunk past a context's end (a grid of every chunk slot spent 2.6 ms a
    step at batch 768 on such programs, on an H200).

    ``counters`` (at least ``num_seqs * Hkv`` int32, zero, used by one launch at a time): the last
    split (or chunk) of each sequence and KV head to finish merges them itself, a launch fewer a
    layer (the merge kernel is ~2.6 us of a ~9 us layer at batch 1). Each counter is zero again
    after the launch, so one buffer serves every layer and every replay of a captured step."""
    if chunk_len > 0 and work is None:
        work = chunk_work(kv_indptr, seq_ids, num_seqs, num_splits, chunk_len)
    fused = counters is not None and num_splits > 1 and counters.numel() >= num_seqs * k_pool.shape[1]
    part_out, part_lse = _split_stage(
        q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids, num_seqs, num_splits, scale, None, config,
        out=out, chunk_len=chunk_len, work=work, counters=counters if fused else None, heads_first=heads_first,
    )  # fmt: skip
    if num_splits == 1 or fused:
        return
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    gather = seq_ids is not None
    block_d = triton.next_power_of_2(head_dim)
    if chunk_len > 0:
        _decode_merge_heads_kernel[(num_seqs, triton.cdiv(num_q_heads, merge_heads))](
            part_out, part_lse, out, qo_indptr, kv_indptr, seq_ids if gather else qo_indptr,
            out.stride(0), out.stride(1), num_splits, chunk_len,
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=merge_heads, GATHER=gather,
            num_warps=8 if merge_heads * block_d >= 2048 else 4,
        )  # fmt: skip
        return
    _decode_merge_kernel[(num_seqs, num_q_heads)](
        part_out, part_lse, out, qo_indptr, seq_ids if gather else qo_indptr, out.stride(0), out.stride(1),
        num_splits, NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        CHUNK=MERGE_CHUNK, GATHER=gather, num_warps=4 if head_dim >= 128 else 2,
    )  # fmt: skip


def decode_partials(
    q: torch.Tensor,  # [T, Hq, D], last dim contiguous
    k_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    v_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    qo_indptr: torch.Tensor,  # [B + 1]
    kv_indptr: torch.Tensor,  # [B + 1]
    kv_slots: torch.Tensor,
    seq_ids: torch.Tensor | None,  # [num_seqs] decoding sequences; None: sequences 0..num_seqs-1
    num_seqs: int,
    num_splits: int,
    scale: float,
    kv_offsets: torch.Tensor | None = None,  # [B] attend context positions kv_offsets[s]..seq_len only
    config: LaunchConfig | None = None,  # default: ``launch_configs.decode_config``
) -> tuple[torch.Tensor, torch.Tensor]:  # [num_seqs, Hq, num_splits, D], [num_seqs, Hq, num_splits]
    """Stage 1 of ``decode_attention``: per split, the normalized partial output (float32) and its
    log-sum-exp (float32, base 2; ``-inf`` for a split without keys). With ``kv_offsets`` every
    sequence must keep at least one key (``kv_offsets[s] < seq_len``): its split 0 is never empty.
    Launched sequences first at any size: the cascade's suffix launch was tuned so, and its warmup
    compiles that form only."""
    return _split_stage(
        q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids, num_seqs, num_splits, scale, kv_offsets, config,
        heads_first=False,
    )  # fmt: skip


def _split_stage(
    q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids, num_seqs, num_splits, scale, kv_offsets, config,
    out: torch.Tensor | None = None,  # given: contexts that one split reads whole are written here
    chunk_len: int = 0,
    work: torch.Tensor | None = None,  # chunked (``chunk_len`` > 0): ``chunk_work``'s list
    counters: torch.Tensor | None = None,  # given: the splits merge themselves (``decode_attention``)
    heads_first: bool | None = None,
):  # fmt: skip
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_pool.shape[1]
    programs = num_seqs * num_kv_heads * (1 if chunk_len > 0 else num_splits)
    if config is None or heads_first is None:  # what the caller left open, as ``launch`` picks it
        picked, picked_heads_first = launch(head_dim, q.device, k_pool.dtype, programs, chunk_len > 0)
        config = config or picked
        heads_first = picked_heads_first if heads_first is None else heads_first
    group = num_q_heads // num_kv_heads
    use_dot = group > 1  # tl.dot needs >= 16 rows: a GQA group is padded to 16 heads
    block_g = max(16, triton.next_power_of_2(group)) if use_dot else 1
    has_out = out is not None
    if has_out and num_splits == 1 and chunk_len == 0:  # every context is written directly: no partials
        part_out = part_lse = out
    else:
        part_out = torch.empty(num_seqs, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_seqs, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    out_t, out_strides = (out, (out.stride(0), out.stride(1))) if has_out else (part_out, (0, 0))
    gather, has_offset, chunked = seq_ids is not None, kv_offsets is not None, chunk_len > 0
    merge_g, block_d = triton.next_power_of_2(group), triton.next_power_of_2(head_dim)
    grid = (num_seqs, num_kv_heads) if chunked else (num_seqs, num_kv_heads, num_splits)
    if heads_first:
        grid = (grid[1], grid[0], *grid[2:])
    _decode_split_kernel[grid](
        q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids if gather else qo_indptr,
        kv_offsets if has_offset else qo_indptr, work if chunked else qo_indptr,
        counters if counters is not None else qo_indptr, part_out, part_lse, out_t,
        scale * LOG2_E, q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), *out_strides,
        num_seqs, num_splits, chunk_len,
        NUM_Q_HEADS=num_q_heads, GROUP=group, BLOCK_G=block_g, HEAD_DIM=head_dim,
        BLOCK_D=block_d, BLOCK_N=config.block_n, GATHER=gather,
        HAS_OFFSET=has_offset, USE_DOT=use_dot, HAS_OUT=has_out, CHUNKED=chunked, FUSED_MERGE=counters is not None,
        HEADS_FIRST=heads_first, MERGE_G=merge_g, MERGE_S=max(1, min(8, MERGE_TILE // (merge_g * block_d))),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **pdl.launch_options(),
    )  # fmt: skip
    return part_out, part_lse


def chunk_work(
    kv_indptr: torch.Tensor,  # [B + 1]
    seq_ids: torch.Tensor | None,  # [num_seqs] decoding sequences; None: sequences 0..num_seqs-1
    num_seqs: int,
    num_splits: int,
    chunk_len: int,
) -> torch.Tensor:  # int32 [2 * num_seqs * (num_splits - 1) + 1]
    """The work list of a chunked decode, built on the device from the lengths (one launch, so a
    captured step builds it at replay): the decode index of every chunk past a context's first,
    then the chunk of each (at most ``num_splits`` chunks a context), then how many there are."""
    work_len = num_seqs * (num_splits - 1)
    work = torch.empty(2 * work_len + 1, dtype=torch.int32, device=kv_indptr.device)
    gather = seq_ids is not None
    _chunk_work_kernel[(1,)](
        kv_indptr, seq_ids if gather else kv_indptr, work, num_seqs, num_splits, chunk_len,
        BLOCK=triton.next_power_of_2(max(num_seqs, 1)), GATHER=gather,
    )  # fmt: skip
    return work
