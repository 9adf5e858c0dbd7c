"""Batch-1 projections: cuBLAS's forms against the engine's Triton GEMV, each shape of Llama-3.1-8B.

At batch 1 a decode step is the weight read. Earlier runs (docs/benchmarks.md, fifth and sixth
sessions, H200): cuBLAS reads QKV at 2.7-2.9 TB/s and the output projection at 1.3-1.9 (copy: 4.3),
the MLP and LM head at 3.6-4.4, and the output and down projections add a split-K reduce kernel; a
Triton GEMV with a K loop lost on every shape. This probe times, at one row, ``F.linear``, cuBLAS on
the weight stored transposed (``x @ w_t``), ``torch.mv``, and ``radixserve.kernels.gemv`` (each
program reads its rows across the whole of K in one load) in every launch the engine's startup
timing tries, each weight cycled through enough copies to miss the L2 cache, all replayed from a
CUDA graph as a decode step runs them, and prints the bandwidth of each next to the card's copy bandwidth. No record.

  python -m bench.gemv_probe                 # Llama-3.1-8B shapes, batch 1
  python -m bench.gemv_probe --pdl           # the GEMV launched with programmatic dependent launch
  python -m bench.gemv_probe --batches 16,32,64 --pdl   # F.linear against the few-row kernel
"""

from __future__ import annotations

import argparse

import torch

from bench.harness.table import print_table

try:
    import triton  # noqa: F401
except ImportError as exc:  # a CPU machine
    raise SystemExit("bench.gemv_probe needs triton and a CUDA GPU") from exc

from bench.harness.roofline import measure_device  # noqa: E402
from radixserve.config import ServerArgs  # noqa: E402
from radixserve.engine.build import _wants_pdl  # noqa: E402
from radixserve.kernels import few_rows, gemv, pdl  # noqa: E402
from radixserve.model.linear_tuning import GraphTimer  # noqa: E402

_TIMER: GraphTimer | None = None  # one capture stream and graph pool for every timing (set in main)

LLAMA_8B_SHAPES = {  # name -> (out_features, in_features)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
L2_MISS_BYTES = 512 << 20  # cycle weight copies through at least this much memory


def _time_us(fn, copies: int, iters: int) -> float:
    """Mean µs of ``fn(i)``, ``i`` cycling through the weight copies, replayed from a CUDA graph (as a
    decode step runs its projections; eager timing would time a Triton launch's host cost)."""
    replays = max(1, iters // copies)
    return _TIMER.time_us(lambda: [fn(i) for i in range(copies)], replays) / copies


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
    if m == 1:
        transposed = [w.t().contiguous() for w in weights]
        row["cublas_wt_us"] = timed(lambda i: x @ transposed[i])
        row["cublas_mv_us"] = timed(lambda i: torch.mv(weights[i], x[0]).view(1, n))
        launches = [(timed(lambda i, c=c: gemv.gemv(x, weights[i], c)), "x".join(map(str, c))) for c in gemv.configs(k)]
        row["triton_us"], row["triton_config"] = min(launches)
        row["triton_all"] = " ".join(f"{label}:{us:.1f}" for us, label in launches)
    elif m <= few_rows.ROW_BLOCKS[-1]:
        forms = [few_rows.FewRows(n, k, c, device) for c in few_rows.CONFIGS]
        launches = [
            (
                timed(lambda i, f=f: f(x, weights[i])),
                "x".join(map(str, f.config[:2])) + f"/{f.splits[few_rows.row_block(m)][0]}",
            )
            for f in forms
        ]
        row["triton_us"], row["triton_config"] = min(launches)
        row["triton_all"] = " ".join(f"{label}:{us:.1f}" for us, label in launches)
    fastest = min(value for key, value in row.items() if key.endswith("_us"))
    row["cublas_tb_s"] = weight_bytes / row["cublas_us"] / 1e6
    row["best_tb_s"] = weight_bytes / fastest / 1e6
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    parser.add_argument(
        "--batches", default="1", help="rows of x (default 1; 2 to 64: F.linear against the few-row kernel)"
    )
    parser.add_argument("--pdl", action="store_true", help="launch our kernels with programmatic dependent launch")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per case")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.gemv_probe needs a CUDA GPU")
    global _TIMER
    device = torch.device("cuda")
    if args.pdl:  # where the engine would allow it: NVIDIA Hopper with a Triton that has gdc_wait
        try:
            pdl.enable(_wants_pdl(ServerArgs(enable_pdl=True), device))
        except ValueError as exc:
            print(f"{exc}: PDL off")
    _TIMER = GraphTimer(device)
    copy = measure_device("bfloat16").copy_bytes_s
    rows = [
        probe(name, n, k, int(m), args.iters)
        for m in args.batches.split(",")
        for name, (n, k) in LLAMA_8B_SHAPES.items()
    ]
    columns = [(key, key) for key in dict.fromkeys(key for row in rows for key in row)]
    title = f"projections of {args.batches} rows, {torch.cuda.get_device_name()}: copy {copy / 1e12:.2f} TB/s"
    print_table(rows, columns, title=title)
    print(
        "cublas: F.linear; cublas_wt: x @ w stored transposed; cublas_mv: torch.mv; triton: the engine's GEMV "
        "(radixserve.kernels.gemv) in its fastest launch (BLOCK_N x num_warps), or above one row the few-row "
        "kernel (radixserve.kernels.few_rows: BLOCK_N x BLOCK_K / splits of K); all launches in triton_all"
    )


if __name__ == "__main__":
    main()
