"""Batch-1 projections: cuBLAS against a plain Triton GEMV, before building a GEMV path (issue 5, d).

At batch 1 a decode step is the weight read, and the batch-1 profile (docs/benchmarks.md, fourth
session) shows cuBLAS reading the QKV and output projections of Llama-3.1-8B at ~3.1 TB/s, against
~4.1 for the MLP and 4.3 for the LM head on the same card, plus a split-K reduce kernel for the
output and down projections. This probe times ``F.linear`` and a Triton GEMV (a few block shapes,
the best kept) on each projection shape of the model at batch 1 (and 2, 4), each weight cycled
through enough copies to miss the L2 cache, and prints the bandwidth of each next to the card's
copy bandwidth. No record: a GEMV path is built only if this says it pays.

The first run (fifth session, H200): cuBLAS 2.7 TB/s on QKV but 1.26 on the output projection
(26.6 µs for 33.6 MB), 3.7-4.3 on the rest; the Triton GEMV lost everywhere (its K loop reduced a
[M, N, K] product every iteration). So it also times, at batch 1: cuBLAS on the weight stored
transposed (``x @ w_t``, another kernel family), ``torch.mv``, and a Triton kernel for one row that
accumulates ``[BLOCK_N, BLOCK_K]`` products and reduces once after the loop, with split-K for the
short-N shapes (each split adds its float32 partial with an atomic).

  python -m bench.gemv_probe                 # Llama-3.1-8B shapes, batch 1, 2, 4
  python -m bench.gemv_probe --batches 1
"""

from __future__ import annotations

import argparse

import torch

from bench.harness.table import print_table

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # a CPU machine
    raise SystemExit("bench.gemv_probe needs triton and a CUDA GPU") from exc

LLAMA_8B_SHAPES = {  # name -> (out_features, in_features)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
CONFIGS = [  # (BLOCK_N, BLOCK_K, num_warps, num_stages)
    (8, 512, 4, 3),
    (16, 256, 4, 4),
    (16, 512, 4, 3),
    (32, 256, 4, 3),
    (32, 256, 8, 4),
    (64, 128, 4, 4),
]
L2_MISS_BYTES = 512 << 20  # cycle weight copies through at least this much memory


@triton.jit
def _gemv_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K], row-major
    y_ptr,  # [M, N]
    N,
    K,
    stride_x,
    stride_w,
    stride_y,
    M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``y = x @ w.T`` for a few rows of ``x``: each program reads ``BLOCK_N`` rows of ``w`` once,
    in ``BLOCK_K`` slices, for every row of ``x``; float32 accumulation."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    m_mask = offs_m < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        k_mask = start + offs_k < K
        w = tl.load(
            w_ptr + offs_n[:, None] * stride_w + (start + offs_k)[None, :],
            mask=n_mask[:, None] & k_mask[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_N, BLOCK_K]
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_x + (start + offs_k)[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_M, BLOCK_K]
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    y_offs = offs_m[:, None] * stride_y + offs_n[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gemv_row_kernel(
    x_ptr,  # [K]
    w_ptr,  # [N, K], row-major
    y_ptr,  # [N] float32, zeroed when SPLIT_K > 1
    N,
    K,
    stride_w,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``y = w @ x`` for one row: ``BLOCK_N`` rows of ``w`` per program over a 1/SPLIT_K share of K,
    element products accumulated in a [BLOCK_N, BLOCK_K] tile and reduced once at the end."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    share = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = tl.program_id(1) * share
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(k_start, k_start + share, BLOCK_K):
        k_mask = start + offs_k < K  # shares are whole blocks: only the last one ends past K
        w = tl.load(
            w_ptr + offs_n[:, None] * stride_w + (start + offs_k)[None, :],
            mask=n_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        x = tl.load(x_ptr + start + offs_k, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if SPLIT_K == 1:
        tl.store(y_ptr + offs_n, y, mask=n_mask)
    else:
        tl.atomic_add(y_ptr + offs_n, y, mask=n_mask)


ROW_CONFIGS = [  # (BLOCK_N, BLOCK_K, SPLIT_K, num_warps)
    (4, 512, 1, 4),
    (8, 512, 1, 4),
    (16, 256, 1, 4),
    (4, 512, 2, 4),
    (8, 256, 4, 4),
    (16, 512, 4, 8),
]


def gemv_row(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int] = ROW_CONFIGS[1]) -> torch.Tensor:
    """``x @ w.T`` for ``x`` of one row ([1, K]), through ``_gemv_row_kernel``."""
    block_n, block_k, split_k, num_warps = config
    n, k = w.shape
    y = (torch.zeros if split_k > 1 else torch.empty)(n, dtype=torch.float32, device=x.device)
    _gemv_row_kernel[(triton.cdiv(n, block_n), split_k)](
        x, w, y, n, k, w.stride(0), SPLIT_K=split_k, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps
    )
    return y.to(x.dtype).view(1, n)


def gemv(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int] = CONFIGS[2]) -> torch.Tensor:
    """``x @ w.T`` (``x``: [M, K] with M <= 8, ``w``: [N, K]; both last-dim contiguous)."""
    block_n, block_k, num_warps, num_stages = config
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, y, n, k, x.stride(0), w.stride(0), y.stride(0),
        M=m, BLOCK_M=max(1, triton.next_power_of_2(m)), BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y


def _time_us(fn, copies: int, iters: int) -> float:
    """Mean µs of ``fn(i)`` over ``iters`` calls, ``i`` cycling through the weight copies."""
    for i in range(copies):  # warm-up: compile, heuristics
        fn(i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(iters):
        fn(i % copies)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def probe(name: str, n: int, k: int, m: int, iters: int) -> dict:
    device = torch.device("cuda")
    weight_bytes = n * k * 2
    copies = max(2, -(-L2_MISS_BYTES // weight_bytes))
    gen = torch.Generator(device=device).manual_seed(0)
    weights = [torch.randn(n, k, device=device, dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(copies)]
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=gen)
    want = torch.nn.functional.linear(x, weights[0]).float()

    def timed(fn) -> float:
        error = ((fn(0).float() - want).norm() / want.norm()).item()
        if error > 1e-2:
            raise AssertionError(f"{name} M={m}: relative error {error:.2e}")
        return _time_us(fn, copies, iters)

    row = {"shape": f"{name} {n}x{k}", "batch": m, "MB": round(weight_bytes / 1e6, 1)}
    row["cublas_us"] = timed(lambda i: torch.nn.functional.linear(x, weights[i]))
    triton = [(timed(lambda i, c=c: gemv(x, weights[i], c)), "x".join(map(str, c))) for c in CONFIGS]
    if m == 1:
        transposed = [w.t().contiguous() for w in weights]
        row["cublas_wt_us"] = timed(lambda i: x @ transposed[i])
        row["cublas_mv_us"] = timed(lambda i: torch.mv(weights[i], x[0]).view(1, n))
        triton += [
            (timed(lambda i, c=c: gemv_row(x, weights[i], c)), "row " + "x".join(map(str, c))) for c in ROW_CONFIGS
        ]
    row["triton_us"], row["triton_config"] = min(triton)
    fastest = min(value for key, value in row.items() if key.endswith("_us"))
    row["cublas_tb_s"] = weight_bytes / row["cublas_us"] / 1e6
    row["best_tb_s"] = weight_bytes / fastest / 1e6
    return row


def _copy_us(size: int) -> float:
    """µs to copy ``size`` bytes device to device (``size`` read and ``size`` written)."""
    source = torch.empty(size, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return _time_us(lambda _: target.copy_(source), 1, 20)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    parser.add_argument("--batches", default="1,2,4", help="rows of x (default 1,2,4)")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per case")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.gemv_probe needs a CUDA GPU")
    copy_us = _copy_us(1 << 30)
    rows = [
        probe(name, n, k, int(m), args.iters)
        for m in args.batches.split(",")
        for name, (n, k) in LLAMA_8B_SHAPES.items()
    ]
    columns = [(key, key) for key in dict.fromkeys(key for row in rows for key in row)]
    title = f"batch-1 projections, {torch.cuda.get_device_name()}: copy {2 * (1 << 30) / copy_us / 1e6:.2f} TB/s"
    print_table(rows, columns, title=title)
    print(
        "cublas: F.linear; cublas_wt: x @ w stored transposed; cublas_mv: torch.mv (batch 1); triton: the best "
        "config (BLOCK_N x BLOCK_K x num_warps x num_stages; row: BLOCK_N x BLOCK_K x SPLIT_K x num_warps)"
    )


if __name__ == "__main__":
    main()
