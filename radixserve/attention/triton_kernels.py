"""Triton kernels of the triton attention backend, and the thin wrappers that launch them.

All three read the paged pool by slot id (page size 1: ``pool[slot]`` is one token's
``[num_kv_heads, head_dim]`` row) and take the batch layout of ``ForwardBatch``: sequence ``s``
owns query rows ``qo_indptr[s]:qo_indptr[s+1]`` and context slots
``kv_slots[kv_indptr[s]:kv_indptr[s+1]]``, its new tokens being the last ones of its context.
Index tensors may be int32 or int64. Softmax runs in base 2 (``scale * log2(e)`` folded into the
scores) with float32 accumulators; inputs are bf16, fp16 or fp32.

* ``store_kv``: one launch writes the new tokens' K and V into the pool at ``out_slots``.
* ``decode_attention``: flash-decoding, one query row per sequence. Stage 1, grid
  ``(sequence, kv head, split)``, runs every query head of one KV head group over one slice of
  the context (K/V loaded once for the group) and writes a partial output and its log-sum-exp;
  stage 2, grid ``(sequence, q head)``, merges the splits. A context that one split reads whole
  (one split, or a chunked decode's short context) is written by stage 1 directly; a chunked
  decode's merge takes several heads per program. Every shape depends only on the batch
  size and the split count, and lengths are read from ``kv_indptr`` on the device, so a decode
  step can be captured in a CUDA graph. ``decode_partials`` is stage 1 alone, optionally from a
  per-sequence first position (the shared-prefix cascade of ``triton_cascade.py`` merges it).
* ``extend_attention``: flash attention for prefill/extend rows, grid ``(q head, query block)``;
  each query block walks its sequence's context in KV blocks gathered by slot id: first the keys
  every row of the block sees (no mask), then the diagonal band (causal mask by position).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.attention.launch_configs import LaunchConfig, decode_config, tuned

LOG2_E = 1.4426950408889634
MERGE_CHUNK = 16  # split partials a merge reads at a time (any split count: one compiled variant)


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [T, Hkv, D]
    v_ptr,  # [T, Hkv, D]
    k_pool_ptr,  # [num_slots, Hkv, D]
    v_pool_ptr,  # [num_slots, Hkv, D]
    out_slots_ptr,  # [T]
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_pool_slot,
    stride_pool_head,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(out_slots_ptr + token).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    pool_offs = slot * stride_pool_slot + offs_h[:, None] * stride_pool_head + offs_d[None, :]
    k = tl.load(k_ptr + token * stride_k_token + offs_h[:, None] * stride_k_head + offs_d[None, :], mask=mask)
    tl.store(k_pool_ptr + pool_offs, k.to(k_pool_ptr.dtype.element_ty), mask=mask)
    v = tl.load(v_ptr + token * stride_v_token + offs_h[:, None] * stride_v_head + offs_d[None, :], mask=mask)
    tl.store(v_pool_ptr + pool_offs, v.to(v_pool_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["num_splits", "chunk_len"])  # one compiled variant whatever the counts
def _decode_split_kernel(
    q_ptr,  # [T, Hq, D]
    k_pool_ptr,  # [num_slots, Hkv, D]
    v_pool_ptr,  # [num_slots, Hkv, D]
    qo_indptr_ptr,  # [B + 1]
    kv_indptr_ptr,  # [B + 1]
    kv_slots_ptr,  # [sum(seq_lens)]
    seq_ids_ptr,  # [num_seqs], read only when GATHER
    kv_offsets_ptr,  # [B] first context position to attend, read only when HAS_OFFSET
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
    num_splits,
    chunk_len,  # > 0: every split reads this many keys (a multiple of BLOCK_N); 0: splits share a context evenly
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
):
    index = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
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
    # chunked: a split past the context (or a direct context's later splits) reads and writes nothing
    idle = (chunk_len > 0) & (lo >= seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q_offs = row * stride_q_token + heads[:, None] * stride_q_head + offs_d[None, :]
    q = tl.load(q_ptr + q_offs, mask=g_mask[:, None] & d_mask[None, :] & ~idle, other=0.0)  # [BLOCK_G, BLOCK_D]
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
    partial = ~idle
    if HAS_OUT:
        direct = _direct(keys, split_len, num_splits, chunk_len)
        out_offs = row * stride_out_token + heads[:, None] * stride_out_head + offs_d[None, :]
        out_mask = g_mask[:, None] & d_mask[None, :] & direct & (split == 0)
        tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
        partial = partial & ~direct
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    part = (index * NUM_Q_HEADS + heads).to(tl.int64) * num_splits + split  # [BLOCK_G]
    tl.store(part_lse_ptr + part, lse, mask=g_mask & partial)
    part_offs = part[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(part_out_ptr + part_offs, out, mask=g_mask[:, None] & d_mask[None, :] & partial)


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


@triton.jit
def heads_lse_max(lse_ptr, base, count, h_mask, best):
    """``best`` ([BLOCK_H]) maxed with each head's ``lse[base : base + count]``, one split at a time."""
    for split in range(0, count):
        best = tl.maximum(best, tl.load(lse_ptr + base + split, mask=h_mask, other=0.0))
    return best


@triton.jit
def heads_weighted(lse_ptr, out_ptr, base, count, best, total, weight, offs_d, h_mask, mask, HEAD_DIM: tl.constexpr):
    """Adds each head's partial outputs ``out[base : base + count]``, weighted by
    ``exp2(lse - best)``, to ``total`` ([BLOCK_H, BLOCK_D]) and the weights to ``weight``."""
    for split in range(0, count):
        w = tl.exp2(tl.load(lse_ptr + base + split, mask=h_mask, other=0.0) - best)
        rows = tl.load(out_ptr + (base + split)[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
        total += w[:, None] * rows
        weight += w
    return total, weight


@triton.jit
def lse_max(lse_ptr, base, count, top, CHUNK: tl.constexpr):
    """``top`` ([CHUNK]) maxed with ``lse[base : base + count]``, read ``CHUNK`` at a time."""
    offs = tl.arange(0, CHUNK)
    for start in range(0, count, CHUNK):
        part = start + offs
        top = tl.maximum(top, tl.load(lse_ptr + base + part, mask=part < count, other=float("-inf")))
    return top


@triton.jit
def weighted_partials(
    lse_ptr, out_ptr, base, count, best, total, weight, offs_d, d_mask, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr
):
    """Adds the partial outputs ``out[base : base + count]`` weighted by ``exp2(lse - best)`` to
    ``total`` ([CHUNK, BLOCK_D]) and their weights to ``weight`` ([CHUNK]); sum both over rows after."""
    offs = tl.arange(0, CHUNK)
    for start in range(0, count, CHUNK):
        part = start + offs
        mask = part < count
        w = tl.exp2(tl.load(lse_ptr + base + part, mask=mask, other=float("-inf")) - best)
        rows = tl.load(
            out_ptr + (base + part)[:, None] * HEAD_DIM + offs_d[None, :],
            mask=mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        total += w[:, None] * rows
        weight += w
    return total, weight


@triton.jit
def exact_dot(a, b):
    """``tl.dot``; IEEE float32 when the operands are float32 (Triton's default there is TF32,
    which would leave a float32 KV pool's attention no more exact than a bf16 one)."""
    if a.dtype == tl.float32:
        result = tl.dot(a, b, input_precision="ieee")
    else:
        result = tl.dot(a, b)
    return result


@triton.jit
def attend_kv_range(
    q,  # [BLOCK_M, BLOCK_D], in the pool's dtype
    m_i,
    l_i,
    acc,
    k_pool_ptr,
    v_pool_ptr,
    kv_slots_ptr,
    kv_start,
    kv_head,
    query_pos,  # [BLOCK_M] context position of each query row
    lo,
    hi,
    scale_log2,
    stride_pool_slot,
    stride_pool_head,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    AFFINE: tl.constexpr,
):
    """Online softmax of ``q`` over context positions ``lo..hi`` (slots from ``kv_slots[kv_start:]``),
    causal by ``query_pos`` when ``CAUSAL``; returns the updated ``(m_i, l_i, acc)``. ``AFFINE``: the
    range's slots are consecutive, ``kv_slots[kv_start] + position``: K/V rows are addressed without
    loading their slot ids first (an experiment of ``bench.cascade_kernels``; the engine passes False)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    first_slot = 0
    if AFFINE:
        first_slot = tl.load(kv_slots_ptr + kv_start).to(tl.int64)
    for start in range(lo, hi, BLOCK_N):
        key_pos = start + offs_n
        n_mask = key_pos < hi
        if AFFINE:
            slots = first_slot + key_pos.to(tl.int64)
        else:
            slots = tl.load(kv_slots_ptr + kv_start + key_pos, mask=n_mask, other=0).to(tl.int64)
        kv_offs = slots[:, None] * stride_pool_slot + kv_head * stride_pool_head + offs_d[None, :]
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_pool_ptr + kv_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        scores = exact_dot(q, tl.trans(k)) * scale_log2  # [BLOCK_M, BLOCK_N]
        visible = n_mask[None, :]
        if CAUSAL:
            visible = visible & (key_pos[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_pool_ptr + kv_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + exact_dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _extend_kernel(
    q_ptr,  # [T, Hq, D]
    k_pool_ptr,  # [num_slots, Hkv, D]
    v_pool_ptr,  # [num_slots, Hkv, D]
    out_ptr,  # [T, Hq, D]
    qo_indptr_ptr,  # [B + 1]
    kv_indptr_ptr,  # [B + 1]
    kv_slots_ptr,  # [sum(seq_lens)]
    block_seq_ptr,  # [num_blocks] the sequence of each query block
    block_index_ptr,  # [num_blocks] the block's index within its sequence's new rows
    scale_log2,
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_pool_slot,
    stride_pool_head,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    head = tl.program_id(0)
    block = tl.program_id(1)
    seq = tl.load(block_seq_ptr + block)
    first_row = tl.load(block_index_ptr + block) * BLOCK_M
    q_start = tl.load(qo_indptr_ptr + seq).to(tl.int64)
    extend_len = (tl.load(qo_indptr_ptr + seq + 1) - q_start).to(tl.int32)
    kv_start = tl.load(kv_indptr_ptr + seq).to(tl.int64)
    seq_len = (tl.load(kv_indptr_ptr + seq + 1) - kv_start).to(tl.int32)
    kv_head = head // GROUP

    offs_m = first_row + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < extend_len
    io_mask = m_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    rows = q_start + offs_m
    q = tl.load(
        q_ptr + rows[:, None] * stride_q_token + head * stride_q_head + offs_d[None, :], mask=io_mask, other=0.0
    )
    q = q.to(k_pool_ptr.dtype.element_ty)
    query_pos = seq_len - extend_len + offs_m  # [BLOCK_M]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # keys before the block's first row are seen by every row; the band after needs the causal mask
    band_start = seq_len - extend_len + first_row
    band_end = tl.minimum(band_start + BLOCK_M, seq_len)
    m_i, l_i, acc = attend_kv_range(
        q, m_i, l_i, acc, k_pool_ptr, v_pool_ptr, kv_slots_ptr, kv_start, kv_head, query_pos, 0, band_start,
        scale_log2, stride_pool_slot, stride_pool_head, HEAD_DIM, BLOCK_D, BLOCK_N, False, False,
    )  # fmt: skip
    m_i, l_i, acc = attend_kv_range(
        q, m_i, l_i, acc, k_pool_ptr, v_pool_ptr, kv_slots_ptr, kv_start, kv_head, query_pos, band_start, band_end,
        scale_log2, stride_pool_slot, stride_pool_head, HEAD_DIM, BLOCK_D, BLOCK_N, True, False,
    )  # fmt: skip
    out = acc / l_i[:, None]
    out_offs = rows[:, None] * stride_out_token + head * stride_out_head + offs_d[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=io_mask)


# ---- launch wrappers ----------------------------------------------------------------------------


def store_kv(
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    v_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    out_slots: torch.Tensor,  # [T]
) -> None:
    """``k_pool[out_slots] = k`` and ``v_pool[out_slots] = v`` (cast to the pool's dtype) in one kernel."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    _store_kv_kernel[(num_tokens,)](
        k, v, k_pool, v_pool, out_slots,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_pool.stride(0), k_pool.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
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
) -> None:
    """Attention of one query row per sequence over its whole context.

    ``chunk_len`` 0: each context is split ``num_splits`` ways evenly, then merged (one split writes
    ``out`` in stage 1 and skips the merge: the merge cost 83 us a layer at batch 768 on an H200).
    ``chunk_len`` > 0 (a multiple of the launch's ``block_n``): each split reads ``chunk_len``
    keys, so a short context is one split, written by stage 1, and only longer ones are merged,
    ``merge_heads`` heads a program. Every context must then fit ``num_splits * chunk_len`` keys
    (the caller's check: the lengths are on the device)."""
    part_out, part_lse = _split_stage(
        q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids, num_seqs, num_splits, scale, None, config,
        out=out, chunk_len=chunk_len,
    )  # fmt: skip
    if num_splits == 1:
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
    """
    return _split_stage(
        q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids, num_seqs, num_splits, scale, kv_offsets, config
    )


def _split_stage(
    q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids, num_seqs, num_splits, scale, kv_offsets, config,
    out: torch.Tensor | None = None,  # given: contexts that one split reads whole are written here
    chunk_len: int = 0,
):  # fmt: skip
    config = config or decode_config(q.shape[2], tuned(q.device, k_pool.dtype))
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_pool.shape[1]
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
    gather, has_offset = seq_ids is not None, kv_offsets is not None
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, seq_ids if gather else qo_indptr,
        kv_offsets if has_offset else qo_indptr, part_out, part_lse, out_t,
        scale * LOG2_E, q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), *out_strides,
        num_splits, chunk_len,
        NUM_Q_HEADS=num_q_heads, GROUP=group, BLOCK_G=block_g, HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_N=config.block_n, GATHER=gather,
        HAS_OFFSET=has_offset, USE_DOT=use_dot, HAS_OUT=has_out, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return part_out, part_lse


def extend_block_m(head_dim: int) -> int:
    """Query rows per program of the extend kernel (the host plans query blocks of this size)."""
    return 128 if head_dim <= 128 else 64


def extend_attention(
    q: torch.Tensor,  # [T, Hq, D], last dim contiguous
    k_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    v_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    out: torch.Tensor,  # [T, Hq, D]; every row of every planned block is written
    qo_indptr: torch.Tensor,  # [B + 1]
    kv_indptr: torch.Tensor,  # [B + 1]
    kv_slots: torch.Tensor,
    block_seq: torch.Tensor,  # [num_blocks]
    block_index: torch.Tensor,  # [num_blocks], block i covers rows [i * extend_block_m, ...) of its sequence
    scale: float,
) -> None:
    """Causal attention of every new row of the planned sequences over its context."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_blocks = block_seq.shape[0]
    if num_blocks == 0:
        return
    _extend_kernel[(num_q_heads, num_blocks)](
        q, k_pool, v_pool, out, qo_indptr, kv_indptr, kv_slots, block_seq, block_index,
        scale * LOG2_E, q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_pool.stride(0), k_pool.stride(1),
        GROUP=num_q_heads // k_pool.shape[1], HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=extend_block_m(head_dim), BLOCK_N=64 if head_dim <= 128 else 32,
        num_warps=8 if head_dim >= 128 else 4, num_stages=2,
    )  # fmt: skip
