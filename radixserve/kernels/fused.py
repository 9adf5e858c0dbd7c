"""Triton kernels fusing the Llama forward's elementwise work, and the wrappers that launch them.

Each launch is one pass over its rows, with shapes taken from tensor metadata only: no host syncs,
so every op can be captured in a CUDA graph. Inputs are bf16, fp16 or fp32; math runs in float32.

* ``rms_norm`` / ``fused_add_rms_norm``: one row per program (``BLOCK = next_power_of_2(hidden)``),
  rounding exactly where ``layers.RMSNorm`` (and HF Llama) rounds: the residual sum in the input
  dtype, the normalised row cast to the input dtype, then the product with the weight.
* ``rope_inplace``: Neox-style RoPE, one token per program covering all its q and k heads; reads the
  float32 cos/sin caches by position (no gather, no cast, no cat) and writes q and k in place;
  optionally also the rotated k and the v into the paged K/V pool (the attention backends' store).
* ``silu_and_mul``: ``silu(gate) * up`` of a fused ``[T, 2I]`` projection, rounded like the torch
  reference (the activation cast to the input dtype before the product).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels import pdl
from radixserve.kernels.grid_dependency import gdc_launch_dependents, gdc_wait  # under ``if PDL:`` only


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [num_outer, num_inner, hidden], last dim contiguous
    residual_ptr,  # [num_outer, hidden] (only with HAS_RESIDUAL, where num_inner == 1)
    out_ptr,  # [num_outer * num_inner, hidden] contiguous
    residual_out_ptr,  # [num_outer, hidden] contiguous (only with HAS_RESIDUAL)
    weight_ptr,  # [hidden]
    stride_x_outer,
    stride_x_inner,
    stride_residual,
    num_inner,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (``pdl``)
):
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x_offs = (row // num_inner) * stride_x_outer + (row % num_inner) * stride_x_inner + offs
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * hidden + offs, x, mask=mask)
    x32 = x.to(tl.float32)
    mean_square = tl.sum(x32 * x32, axis=0) / hidden
    normed = (x32 * tl.rsqrt(mean_square + eps)).to(x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * hidden + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if PDL:
        gdc_launch_dependents()


@triton.jit
def _rotate_heads(
    head0_ptr,  # this token's first head
    stride_head,
    cos,  # [1, BLOCK_HALF] float32
    sin,  # [1, BLOCK_HALF] float32
    offs_d,  # [BLOCK_HALF]
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Rotates the token's heads in place; returns the two rotated halves ([BLOCK_H, BLOCK_HALF],
    rounded to the heads' dtype) and their mask."""
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_d[None, :] < HALF)
    first_ptrs = head0_ptr + offs_h[:, None] * stride_head + offs_d[None, :]  # [BLOCK_H, BLOCK_HALF]
    x1 = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = head0_ptr.dtype.element_ty
    y1 = (x1 * cos - x2 * sin).to(dtype)
    y2 = (x2 * cos + x1 * sin).to(dtype)
    tl.store(first_ptrs, y1, mask=mask)
    tl.store(first_ptrs + HALF, y2, mask=mask)
    return y1, y2, mask


@triton.jit
def _rope_kernel(
    positions_ptr,  # [T] int32/int64
    q_ptr,  # [T, NUM_Q_HEADS, 2 * HALF], last dim contiguous
    k_ptr,  # [T, NUM_KV_HEADS, 2 * HALF], last dim contiguous
    cos_ptr,  # [max_positions, HALF] contiguous, float32 (any float dtype is read as float32)
    sin_ptr,  # [max_positions, HALF] contiguous
    v_ptr,  # STORE: [T, NUM_KV_HEADS, 2 * HALF], last dim contiguous
    k_pool_ptr,  # STORE: [num_slots, NUM_KV_HEADS, 2 * HALF]
    v_pool_ptr,  # STORE: same
    out_slots_ptr,  # STORE: [T] the pool slot of each token's K/V
    stride_q_token,
    stride_q_head,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_pool_slot,
    stride_pool_head,
    stride_cache,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    STORE: tl.constexpr,  # also write the rotated k and v into the pool (the backend's K/V store)
    PDL: tl.constexpr,
):
    if PDL:
        gdc_wait()
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    cos = tl.load(cos_ptr + position * stride_cache + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + position * stride_cache + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(q_ptr + token * stride_q_token, stride_q_head, cos, sin, offs_d, NUM_Q_HEADS, HALF, BLOCK_HQ)
    k1, k2, mask = _rotate_heads(
        k_ptr + token * stride_k_token, stride_k_head, cos, sin, offs_d, NUM_KV_HEADS, HALF, BLOCK_HKV
    )
    if STORE:
        slot = tl.load(out_slots_ptr + token).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_HKV)
        pool_offs = slot * stride_pool_slot + offs_h[:, None] * stride_pool_head + offs_d[None, :]
        pool_dtype = k_pool_ptr.dtype.element_ty
        tl.store(k_pool_ptr + pool_offs, k1.to(pool_dtype), mask=mask)
        tl.store(k_pool_ptr + pool_offs + HALF, k2.to(pool_dtype), mask=mask)
        v_offs = token * stride_v_token + offs_h[:, None] * stride_v_head + offs_d[None, :]
        v1 = tl.load(v_ptr + v_offs, mask=mask, other=0.0)
        v2 = tl.load(v_ptr + v_offs + HALF, mask=mask, other=0.0)
        tl.store(v_pool_ptr + pool_offs, v1.to(v_pool_ptr.dtype.element_ty), mask=mask)
        tl.store(v_pool_ptr + pool_offs + HALF, v2.to(v_pool_ptr.dtype.element_ty), mask=mask)
    if PDL:
        gdc_launch_dependents()


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,  # [T, 2 * size], last dim contiguous
    out_ptr,  # [T, size] contiguous
    stride_gate_up,
    size,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    gate = tl.load(gate_up_ptr + row * stride_gate_up + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_gate_up + size + offs, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    activation = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * size + offs, (activation * up).to(dtype), mask=mask)
    if PDL:
        gdc_launch_dependents()


# ---- launch wrappers ----------------------------------------------------------------------------


def _row_warps(block: int) -> int:
    return 8 if block >= 4096 else 4 if block >= 1024 else 2 if block >= 256 else 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)`` over the last dim, as a new contiguous
    tensor of ``x``'s shape and dtype. ``x``: ``[T, hidden]`` or ``[T, heads, hidden]`` (any strides
    with a contiguous last dim; e.g. q of a split qkv), ``weight``: ``[hidden]`` in ``x``'s dtype."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.dim() not in (2, 3):
        x = x.reshape(-1, x.shape[-1])
    x = x if x.stride(-1) == 1 else x.contiguous()
    hidden = x.shape[-1]
    num_inner = x.shape[1] if x.dim() == 3 else 1
    stride_inner = x.stride(1) if x.dim() == 3 else 0
    num_rows = x.numel() // hidden
    if num_rows == 0:
        return out
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(num_rows,)](
        x, x, out, out, weight, x.stride(0), stride_inner, 0, num_inner, hidden, eps,
        HAS_RESIDUAL=False, BLOCK=block, num_warps=_row_warps(block), **pdl.launch_options(),
    )  # fmt: skip
    return out


def fused_add_rms_norm(
    x: torch.Tensor,  # [T, hidden], last dim contiguous
    residual: torch.Tensor,  # [T, hidden], last dim contiguous
    weight: torch.Tensor,  # [hidden]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one launch; the sum is rounded to ``x.dtype``
    (like ``residual + x`` in torch). Both outputs are new contiguous ``[T, hidden]`` tensors."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    residual = residual if residual.stride(-1) == 1 else residual.contiguous()
    num_rows, hidden = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    residual_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if num_rows == 0:
        return out, residual_out
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(num_rows,)](
        x, residual, out, residual_out, weight, x.stride(0), 0, residual.stride(0), 1, hidden, eps,
        HAS_RESIDUAL=True, BLOCK=block, num_warps=_row_warps(block), **pdl.launch_options(),
    )  # fmt: skip
    return out, residual_out


def rope_inplace(
    positions: torch.Tensor,  # [T] int32/int64
    q: torch.Tensor,  # [T, Hq, D], last dim contiguous (a view of the fused qkv output is fine)
    k: torch.Tensor,  # [T, Hkv, D], last dim contiguous
    cos_cache: torch.Tensor,  # [max_positions, D // 2] float32
    sin_cache: torch.Tensor,  # [max_positions, D // 2] float32
    store: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Rotate the two halves of every q and k head by its token's position, in place.

    Computes ``x * cos + rotate_half(x) * sin`` in float32 from the float32 caches and rounds once
    to ``q.dtype``; the torch reference rounds cos/sin and each product to ``q.dtype`` first, so in
    bf16 the two differ by a few bf16 ulps (relative error below 1e-2), and agree to fp32 rounding
    in fp32. Positions must lie in ``[0, max_positions)`` (not checked: that would sync).

    ``store = (v, k_pool, v_pool, out_slots)``: the same launch also writes each token's rotated k
    and its v into the pools (``[num_slots, Hkv, D]``, contiguous) at its slot, converted to the
    pools' dtype, exactly as the backends' K/V store would (one launch a layer fewer).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or not (cos_cache.is_contiguous() and sin_cache.is_contiguous()):
        raise ValueError("rope_inplace needs q and k with a contiguous last dim and contiguous caches")
    if store is not None:
        v, k_pool, v_pool, out_slots = store
        if v.stride(-1) != 1 or not (k_pool.is_contiguous() and v_pool.is_contiguous()):
            raise ValueError("rope_inplace stores need v with a contiguous last dim and contiguous pools")
    if num_tokens == 0:
        return
    half = head_dim // 2
    block_hq, block_hkv = triton.next_power_of_2(num_q_heads), triton.next_power_of_2(num_kv_heads)
    if store is None:
        v, k_pool, v_pool, out_slots = k, k, k, positions  # not read
    _rope_kernel[(num_tokens,)](
        positions, q, k, cos_cache, sin_cache, v, k_pool, v_pool, out_slots,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_pool.stride(0), k_pool.stride(1), cos_cache.stride(0),
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=half,
        BLOCK_HQ=block_hq, BLOCK_HKV=block_hkv, BLOCK_HALF=triton.next_power_of_2(half), STORE=store is not None,
        num_warps=4 if block_hq * half >= 2048 else 2, **pdl.launch_options(),
    )  # fmt: skip


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate_up[:, :I]) * gate_up[:, I:]`` for ``gate_up: [T, 2I]``; returns ``[T, I]`` contiguous."""
    gate_up = gate_up if gate_up.stride(-1) == 1 else gate_up.contiguous()
    num_tokens, size = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(num_tokens, size, dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens == 0:
        return out
    block = min(triton.next_power_of_2(size), 1024)
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(size, block))](
        gate_up, out, gate_up.stride(0), size, BLOCK=block, num_warps=4 if block >= 512 else 2,
        **pdl.launch_options(),
    )  # fmt: skip
    return out
