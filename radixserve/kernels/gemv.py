"""One-row projection ``y = x @ W.T`` (a batch-1 decode step's GEMV), read at the card's bandwidth.

At batch 1 a decode step is the weight read. cuBLAS serves the short-N shapes of Llama-3.1-8B
below the card's bandwidth (``bench.gemv_probe``: the output projection 4096 x 4096 at 1.3-1.9
TB/s on an H200 where copy runs at 4.3, QKV at 2.7-2.9) and adds a split-K reduce kernel to the
output and down projections. A GEMV is only a read; what it needs is bytes in flight. So each
program here loads its ``BLOCK_N`` rows of ``W`` across the whole of K in one load (``BLOCK_K =
next_power_of_2(K)``, masked past K): no loop, no split-K, every load issued before any product is
formed, a few hundred of them in flight per SM. Products and the row sums run in float32; the
result is rounded once to ``x``'s dtype, as cuBLAS rounds it.

With programmatic dependent launch (``radixserve.kernels.pdl``) the weight tile is loaded before
``gdc_wait``: no kernel writes weights, so reading them while the kernel ahead finishes is exact,
and that read is all but the whole of this kernel's time. ``x``, which the kernel ahead wrote, is
read only after the wait. The signal to launch dependents follows the store.

``Linear`` uses it through ``radixserve.model.linear_tuning`` where the startup timing finds it
faster than cuBLAS for a weight shape. Shapes come from tensor metadata: no host syncs, so the
launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels import pdl
from radixserve.kernels.grid_dependency import gdc_launch_dependents, gdc_wait  # under ``if PDL:`` only

# (BLOCK_N, num_warps) launches, by name; each program holds BLOCK_N * next_power_of_2(K) weights
# in registers, (BLOCK_N * BLOCK_K) / (32 * num_warps) per thread: at most MAX_PER_THREAD.
MAX_PER_THREAD = 64


@triton.jit
def _gemv_kernel(
    x_ptr,  # [K], contiguous
    w_ptr,  # [N, K], last dim contiguous
    y_ptr,  # [N], contiguous
    N,
    K,
    stride_w,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    k_mask = offs_k < K
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w
    w = tl.load(
        rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0, eviction_policy="evict_first"
    )
    if PDL:  # weights are never written by a kernel: only x waits for the kernel ahead
        gdc_wait()
    x = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0)
    y = tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_mask)
    if PDL:
        gdc_launch_dependents()


def configs(k: int) -> list[tuple[int, int]]:
    """The ``(BLOCK_N, num_warps)`` launches worth timing for a K: 32 or 64 weights a thread, 4 to
    16 warps; empty where even one row of 16 warps would hold more than ``MAX_PER_THREAD``."""
    block_k = triton.next_power_of_2(k)
    found = []
    for num_warps in (4, 8, 16):
        for per_thread in (32, MAX_PER_THREAD):
            block_n, rest = divmod(per_thread * 32 * num_warps, block_k)
            if block_n >= 1 and rest == 0 and (block_n, num_warps) not in found:
                found.append((block_n, num_warps))
    return found


def gemv(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int]) -> torch.Tensor:
    """``x @ w.T`` for ``x`` of one row ``[1, K]`` and ``w`` ``[N, K]`` (last dim contiguous), as a
    new ``[1, N]`` tensor in ``x``'s dtype; ``config`` is one of ``configs(K)``."""
    block_n, num_warps = config
    n, k = w.shape
    if x.shape != (1, k) or x.dtype != w.dtype or w.stride(1) != 1:
        raise ValueError(
            f"gemv: x [1, {k}] and w [N, {k}] with a contiguous last dim, one dtype (got x {tuple(x.shape)} "
            f"{x.dtype}, w {tuple(w.shape)} {w.dtype} strides {w.stride()})"
        )
    x = x if x.is_contiguous() else x.contiguous()
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, y, n, k, w.stride(0),
        BLOCK_N=block_n, BLOCK_K=triton.next_power_of_2(k), num_warps=num_warps, **pdl.launch_options(),
    )  # fmt: skip
    return y
