"""Workload bounds for a card given by its figures, no GPU needed: how far the goals can be reached.

The benches compute their roofline from the card they run on. This prints the same bounds
(``bench/harness/roofline.py``) for any copy bandwidth and bf16 GEMM rate, for Llama-3.1-8B on

* workload (a), ``sharegpt`` (1,000 requests, the bench's seed): the roofline (prefill, then each
  decode step the max of its bytes and FLOPs) and the FLOP-only bound (every prompt and output
  token's linear-layer FLOPs at the peak rate, nothing else: no engine can beat it);
* ``shared-prefix`` (64 x 16, 2,048 + 128 in, 256 out): the roofline of an engine with the prefix
  cache and of one without it, their ratio (the speedup two engines at their rooflines would show),
  and the same ratio of the FLOP-only bounds;

and for each, the phase-sum bound: decode steps bounded phase by phase (the projections' bytes or
FLOPs, then attention's), as engines whose GEMMs and attention kernels run one after the other can
at best reach (``ModelShape.decode_step_seconds(phases=True)``).

  python -m bench.roofline_bounds                                   # the H200 of the GPU runs
  python -m bench.roofline_bounds --copy-gb-s 3000 --matmul-tflop-s 740 --card "H100 (brief)"
"""

from __future__ import annotations

import argparse

from bench.harness import model_files, workloads
from bench.harness.prefix_index import prefix_hits
from bench.harness.roofline import DeviceSpeed, ModelShape, workload_roofline
from bench.harness.table import print_table

VOCAB = 128256


def flop_bound_seconds(shape: ModelShape, speed: DeviceSpeed, requests, hits: list[int]) -> float:
    """Prefill of the uncached prompt tokens plus the linear layers of every later output token."""
    prefill = sum(shape.prefill_seconds(speed, r.prompt_len, hit) for r, hit in zip(requests, hits))
    decode_tokens = sum(max(r.output_len - 1, 0) for r in requests)
    return prefill + decode_tokens * 2 * shape.linear_params / speed.matmul_flop_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    parser.add_argument("--copy-gb-s", type=float, default=4245.0, help="device copy bandwidth (default: the H200 run)")
    parser.add_argument("--matmul-tflop-s", type=float, default=783.36, help="bf16 GEMM rate (default: the H200 run)")
    parser.add_argument("--card", default="H200 (measured)")
    parser.add_argument("--max-batch", type=int, default=1024, help="running requests (the h100 preset)")
    parser.add_argument("--pool-tokens", type=int, default=845_197, help="KV pool (default: the H200 run's)")
    args = parser.parse_args(argv)
    speed = DeviceSpeed(args.card, args.copy_gb_s * 1e9, args.matmul_tflop_s * 1e12, "bf16")
    shape = ModelShape.from_config_dir(model_files.LLAMA_8B_DIR, 2)
    rows = []

    sharegpt = workloads.sharegpt(1000, VOCAB, 0)
    no_hits = [0] * len(sharegpt)
    bound = workload_roofline(shape, speed, sharegpt, no_hits, args.max_batch, args.pool_tokens)
    phased = workload_roofline(shape, speed, sharegpt, no_hits, args.max_batch, args.pool_tokens, phases=True)
    outputs = sum(r.output_len for r in sharegpt)
    flops = flop_bound_seconds(shape, speed, sharegpt, no_hits)
    rows.append(_row("(a) sharegpt", bound, phased, outputs, flops))

    shared = workloads.shared_prefix(64, 16, 2048, 128, 256, VOCAB, 0)
    hits = prefix_hits([r.prompt_ids for r in shared])
    outputs = sum(r.output_len for r in shared)
    on = workload_roofline(shape, speed, shared, hits, args.max_batch, args.pool_tokens)
    off = workload_roofline(shape, speed, shared, hits, args.max_batch, args.pool_tokens, cache=False)
    on_phased = workload_roofline(shape, speed, shared, hits, args.max_batch, args.pool_tokens, phases=True)
    off_phased = workload_roofline(
        shape, speed, shared, hits, args.max_batch, args.pool_tokens, cache=False, phases=True
    )
    flops_on = flop_bound_seconds(shape, speed, shared, hits)
    flops_off = flop_bound_seconds(shape, speed, shared, [0] * len(shared))
    rows.append(_row("shared-prefix, cache on", on, on_phased, outputs, flops_on))
    rows.append(_row("shared-prefix, cache off", off, off_phased, outputs, flops_off))
    rows[-2]["ratio"] = (
        f"{off.seconds / on.seconds:.2f}x roofline, {off_phased.seconds / on_phased.seconds:.2f}x phase sum, "
        f"{flops_off / flops_on:.2f}x FLOPs"
    )
    print_table(
        rows,
        [(key, key) for key in rows[-2]],
        title=f"Llama-3.1-8B bounds, {args.card}: copy {args.copy_gb_s:,.0f} GB/s, GEMM {args.matmul_tflop_s} TFLOP/s",
    )


def _row(name: str, bound, phased, outputs: int, flop_seconds: float) -> dict:
    return {
        "workload": name,
        "roofline_s": round(bound.seconds, 2),
        "phase_sum_s": round(phased.seconds, 2),
        "prefill_s": round(bound.prefill_seconds, 2),
        "decode_steps": bound.num_decode_steps,
        "mean_batch": round(bound.mean_batch),
        "roofline_out_tok_s": round(outputs / bound.seconds),
        "phase_sum_out_tok_s": round(outputs / phased.seconds),
        "flop_bound_out_tok_s": round(outputs / flop_seconds),
        "ratio": "",
    }


if __name__ == "__main__":
    main()
