"""Few-row projection ``y = x @ W.T`` for 2 to 64 rows (small decode batches), aimed at the card's bandwidth.

A decode step of a few sequences is still the weight read: at batch 20 cuBLAS's projections took
4.15 ms a step on an H200 where the weights read in 3.5 (docs/benchmarks.md, eighth session),
through split-K kernels and a reduce kernel after each short-N projection. Here the product is
computed swapped, ``y.T = W @ x.T``, so that W's rows fill the tensor-core tile (``BLOCK_N`` of
them, 64 or 128) and the few rows of ``x`` its narrow side (``BLOCK_M``: 16, 32 or 64, masked past
M). Each program streams its rows of W over a 1/``num_splits`` share of K, ``BLOCK_K`` at a time
in a pipelined loop, float32 accumulation.

Short-N shapes split K so that every SM has programs (``split_count``; fewer splits for more rows,
whose partials cost more). The splits of a tile of
rows then add themselves up: each stores its float32 partial, takes a ticket from the tile's
counter, and the last to arrive sums every split's partial in split order (so the result does not
depend on which finished last) and zeroes the counter again for the next launch; the partials
are read through L2. No reduce kernel, no atomics on the result.

With programmatic dependent launch (``radixserve.kernels.pdl``) every program waits before its
first read. ``Linear`` uses it through ``radixserve.model.linear_tuning`` where the startup timing
finds it faster than ``F.linear`` for a weight shape and a row count. No host syncs: the launch
can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from radixserve.kernels import pdl
from radixserve.kernels.grid_dependency import gdc_launch_dependents, gdc_wait  # under ``if PDL:`` only

ROW_BLOCKS = (16, 32, 64)  # BLOCK_M: the row counts the startup timing times (at most this many rows)
MAX_SPLITS = 8


@triton.jit(do_not_specialize=["M"])  # decode graphs of 2, 24, 40 ... rows share the tuning's compiles
def _few_rows_kernel(
    x_ptr,  # [M, K], last dim contiguous
    w_ptr,  # [N, K], last dim contiguous
    y_ptr,  # [M, N], last dim contiguous
    partial_ptr,  # SPLIT: [num_splits, M, N] float32
    counter_ptr,  # SPLIT: [cdiv(N, BLOCK_N)] int32, zero between launches
    M,
    N,
    K,
    split_len,  # keys a split reads, a multiple of BLOCK_K
    num_splits,
    stride_x,
    stride_w,
    stride_y,
    SPLIT: tl.constexpr,
    IEEE: tl.constexpr,  # float32 inputs: exact products (no TF32)
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        gdc_wait()
    tile = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    m_mask = offs_m < M
    k_start = split * split_len
    k_end = tl.minimum(k_start + split_len, K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w
    x_rows = x_ptr + offs_m.to(tl.int64)[None, :] * stride_x
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < k_end
        w = tl.load(w_rows + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        xt = tl.load(x_rows + k[:, None], mask=m_mask[None, :] & k_mask[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(w, xt, acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)
    out_mask = n_mask[:, None] & m_mask[None, :]
    out_offs = offs_m.to(tl.int64)[None, :] * stride_y + offs_n[:, None]
    if SPLIT:
        mn = offs_m.to(tl.int64)[None, :] * N + offs_n[:, None]  # [BLOCK_N, BLOCK_M] in [M, N]
        split_stride = M.to(tl.int64) * N
        tl.store(partial_ptr + split * split_stride + mn, acc, mask=out_mask)
        # every thread's partial is stored before the ticket; the ticket (acq_rel, GPU scope) makes
        # every other split's partial visible to the last one
        tl.debug_barrier()
        ticket = tl.atomic_add(counter_ptr + tile, 1)
        if ticket == num_splits - 1:
            total = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            for s in range(0, num_splits):  # in split order: the sum does not depend on arrival
                total += tl.load(partial_ptr + s * split_stride + mn, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + out_offs, total.to(y_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(counter_ptr + tile, 0)  # zero again for the next launch
    else:
        tl.store(y_ptr + out_offs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    if PDL:
        gdc_launch_dependents()


# (BLOCK_N, BLOCK_K, num_warps, num_stages): the launches the startup timing tries
CONFIGS = ((64, 128, 4, 4), (128, 128, 4, 3))


def row_block(m: int) -> int:
    """``BLOCK_M`` for ``m`` rows (2 to 64): the smallest of ``ROW_BLOCKS`` that holds them."""
    return next(block for block in ROW_BLOCKS if m <= block)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_count(n: int, k: int, rows: int, block_n: int, block_k: int, sms: int) -> int:
    """Splits of K so that the tiles of rows give every SM two programs: a power of two, at most
    ``MAX_SPLITS``, each split at least ``BLOCK_K`` keys, and the float32 partials (written once,
    read once) at most 1/8 of the weight read: splits x rows <= K / 32."""
    tiles = triton.cdiv(n, block_n)
    splits = 1
    while (
        splits < MAX_SPLITS
        and tiles * splits < 2 * sms
        and k // (2 * splits) >= block_k
        and 2 * splits * rows <= k // 32
    ):
        splits *= 2
    return splits


class FewRows:
    """One launch of the kernel for a weight shape ``[N, K]``: ``(x, w) -> x @ w.T`` for up to 64
    rows (the engine uses it for 2 and more), K split per row block (``split_count``). The counters
    its splits add themselves up with are zero between launches. All the layers of one shape share
    them, so its launches must run one at a time, as on one stream (with programmatic dependent
    launch each waits for the one before it before touching them)."""

    def __init__(self, n: int, k: int, config: tuple[int, int, int, int], device: torch.device, sms: int = 0):
        self.config = config
        self.shape = (n, k)
        block_n, block_k = config[:2]
        sms = sms or (_sm_count(device.index or 0) if device.type == "cuda" else 4)
        self.splits = {}  # row block -> (splits, keys a split), no split empty
        for block in ROW_BLOCKS:
            wanted = split_count(n, k, block, block_n, block_k, sms)
            split_len = triton.cdiv(triton.cdiv(k, wanted), block_k) * block_k
            self.splits[block] = (triton.cdiv(k, split_len), split_len)
        self.counters = torch.zeros(triton.cdiv(n, block_n), dtype=torch.int32, device=device)

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        block_n, block_k, num_warps, num_stages = self.config
        m, k = x.shape
        n = w.shape[0]
        if not 1 <= m <= ROW_BLOCKS[-1] or tuple(w.shape) != self.shape or x.dtype != w.dtype or w.stride(1) != 1:
            raise ValueError(
                f"few_rows: x [1..{ROW_BLOCKS[-1]}, {self.shape[1]}] and w {list(self.shape)} with a contiguous last "
                f"dim, one dtype (got x {tuple(x.shape)} {x.dtype}, w {tuple(w.shape)} {w.dtype} strides {w.stride()})"
            )
        x = x if x.stride(1) == 1 else x.contiguous()
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        block_m = row_block(m)
        num_splits, split_len = self.splits[block_m]
        split = num_splits > 1
        partial = torch.empty(num_splits, m, n, dtype=torch.float32, device=x.device) if split else y
        _few_rows_kernel[(triton.cdiv(n, block_n), num_splits)](
            x, w, y, partial, self.counters, m, n, k, split_len, num_splits,
            x.stride(0), w.stride(0), y.stride(0),
            SPLIT=split, IEEE=x.dtype == torch.float32, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k,
            num_warps=num_warps, num_stages=num_stages, **pdl.launch_options(),
        )  # fmt: skip
        return y
