"""Triton kernels of the triton attention backend for prefill/extend and the K/V store, the
jit helpers the decode kernels share (``triton_decode.py``, ``triton_cascade.py``), and the thin
wrappers that launch them.

Every kernel reads the paged pool by slot id (page size 1: ``pool[slot]`` is one token's
``[num_kv_heads, head_dim]`` row) and takes the batch layout of ``ForwardBatch``: sequence ``s``
owns query rows ``qo_indptr[s]:qo_indptr[s+1]`` and context slots
``kv_slots[kv_indptr[s]:kv_indptr[s+1]]``, its new tokens being the last ones of its context.
Index tensors may be int32 or int64. Softmax runs in base 2 (``scale * log2(e)`` folded into the
scores) with float32 accumulators; inputs are bf16, fp16 or fp32.

* ``store_kv``: one launch writes the new tokens' K and V into the pool at ``out_slots``.
* ``extend_attention``: flash attention for prefill/extend rows, grid ``(q head, query block)``;
  each query block walks its sequence's context in KV blocks gathered by slot id: first the keys
  every row of the block sees (no mask), then the diagonal band (causal mask by position).
* the decode (one query row per sequence): ``triton_decode.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


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
