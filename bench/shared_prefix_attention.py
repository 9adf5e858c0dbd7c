"""Micro-benchmark: decode attention over shared prefixes, one layer, Llama-3-8B shapes, bf16.

64 groups x 16 requests, each group sharing a 2,048-token prefix (same slots: radix-tree hits),
each request 256 tokens of its own; one decode step (1,024 x 2,304 context). Times, with CUDA
events (median of ``--iters``), the backend's ``forward`` (K/V store + attention) of:

* plain Triton decode (split-K flash-decoding, reads every context once per request),
* FlashInfer ``BatchDecodeWithPagedKVCacheWrapper`` (if flashinfer imports),
* the Triton cascade (each group's prefix read once per tile; see attention/triton_cascade.py),
  also with the prefix split count forced to each of ``--prefix-splits``,

and prints the K/V bytes each must read (the cascade's partials written and read back counted
apart), the achieved GB/s, the host time of the cascade's ``prepare`` in steady state, and the
relative error of every output against the plain decode.

    .venv/bin/python bench/shared_prefix_attention.py [--groups 64] [--members 16] [--shared 2048] [--own 256]

Results: (to be filled in by whoever runs it on a GPU: command, card, date, numbers)
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import time

import torch

from radixserve.attention.base import ForwardBatch
from radixserve.attention.triton_backend import TritonBackend
from radixserve.runner.kv_pool import KVPool

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--shared", type=int, default=2048, help="shared prefix tokens per group")
    parser.add_argument("--own", type=int, default=256, help="tokens of each request's own, incl. the new one")
    parser.add_argument("--loners", type=int, default=0, help="extra requests outside any group")
    parser.add_argument("--shuffle", action="store_true", help="scatter slots randomly (default: runs)")
    parser.add_argument("--prefix-splits", default="1,2,4,8", help="prefix split counts to force, comma separated")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--min-saved-mb", type=float, default=None, help="override TritonBackend's threshold")
    return parser.parse_args()


def build_contexts(args) -> list[list[int]]:
    """Each request's slots: its group's prefix, then its own. Slot 0 is the pool's dummy."""
    lengths = [args.shared] * args.groups + [args.own] * (args.groups * args.members + args.loners)
    total = sum(lengths)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(0)) if args.shuffle else torch.arange(total)
    slots = (order + 1).tolist()
    prefixes, rest = [], slots
    for _ in range(args.groups):
        prefixes.append(rest[: args.shared])
        rest = rest[args.shared :]
    owns = [rest[i * args.own : (i + 1) * args.own] for i in range(args.groups * args.members + args.loners)]
    contexts = [prefixes[g] + owns[g * args.members + m] for m in range(args.members) for g in range(args.groups)]
    return contexts + owns[args.groups * args.members :]  # groups interleaved, loners last


def make_batch(contexts: list[list[int]], device) -> ForwardBatch:
    seq_lens = [len(c) for c in contexts]
    index = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
    batch = ForwardBatch(
        input_ids=index([0] * len(contexts)),
        positions=index([n - 1 for n in seq_lens]),
        out_slots=index([c[-1] for c in contexts]),
        qo_indptr=index(list(range(len(contexts) + 1))),
        kv_indptr=index([0, *itertools.accumulate(seq_lens)]),
        kv_slots=index([slot for c in contexts for slot in c]),
        seq_lens=seq_lens,
        extend_lens=[1] * len(contexts),
        logits_indices=index(list(range(len(contexts)))),
    )
    return batch


def with_identity(batch: ForwardBatch, contexts: list[list[int]]) -> ForwardBatch:
    batch.seq_slots = contexts
    batch.seq_keys = [f"request-{i}" for i in range(len(contexts))]
    batch.seq_versions = [0] * len(contexts)
    return batch


def time_us(fn, iters: int, device) -> float:
    """Median microseconds of ``fn()`` over ``iters`` runs, after warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3)
        else:
            began = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - began) * 1e6)
    return statistics.median(samples)


def rel_error(out: torch.Tensor, want: torch.Tensor) -> float:
    return ((out.float() - want.float()).norm() / want.float().norm()).item()


def report(name: str, us: float, kv_bytes: int, extra_bytes: int = 0, error: float | None = None) -> None:
    total = kv_bytes + extra_bytes
    line = f"{name:<34} {us:9.1f} us  K/V {kv_bytes / 1e9:6.3f} GB"
    line += f" (+{extra_bytes / 1e9:.3f} GB partials)" if extra_bytes else " " * 24
    line += f"  {total / us / 1e3:7.0f} GB/s"
    if error is not None:
        line += f"  rel err vs plain {error:.1e}"
    print(line)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    contexts = build_contexts(args)
    num_slots = max(max(c) for c in contexts) + 1
    pool = KVPool(num_slots, 1, NUM_KV_HEADS, HEAD_DIM, torch.bfloat16, device)
    for buffer in (*pool.k_buffers, *pool.v_buffers):
        buffer.normal_()
    gen = torch.Generator(device=device).manual_seed(1)
    batch_size = len(contexts)
    q = torch.randn(batch_size, NUM_Q_HEADS, HEAD_DIM, generator=gen, device=device, dtype=torch.bfloat16)
    k = torch.randn(batch_size, NUM_KV_HEADS, HEAD_DIM, generator=gen, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    scale = HEAD_DIM**-0.5
    row_bytes = 2 * NUM_KV_HEADS * HEAD_DIM * 2
    plain_bytes = sum(len(c) for c in contexts) * row_bytes
    print(f"{device}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"batch {batch_size}: {args.groups} groups x {args.members} x ({args.shared} shared + {args.own} own)")

    partial_bytes = batch_size * NUM_Q_HEADS * HEAD_DIM * 4 * 2  # one float32 split, written and read back

    threshold = {} if args.min_saved_mb is None else {"min_saved_bytes": int(args.min_saved_mb * 2**20)}
    triton = TritonBackend(pool, num_q_heads=NUM_Q_HEADS, min_shared_prefix=min(256, args.shared), **threshold)
    plain_batch = make_batch(contexts, device)
    triton.prepare(plain_batch)
    plain_partials = partial_bytes * triton._plan.num_splits
    plain_us = time_us(lambda: triton.forward(q, k, v, 0, plain_batch, scale), args.iters, device)
    plain = triton.forward(q, k, v, 0, plain_batch, scale).clone()
    report(f"triton plain decode, {triton._plan.num_splits} splits", plain_us, plain_bytes, plain_partials)

    if device.type == "cuda" and importlib.util.find_spec("flashinfer") is not None:
        from radixserve.attention.flashinfer_backend import FlashInferBackend

        flashinfer = FlashInferBackend(pool, NUM_Q_HEADS)
        flashinfer.prepare(plain_batch)
        fi_us = time_us(lambda: flashinfer.forward(q, k, v, 0, plain_batch, scale), args.iters, device)
        fi_error = rel_error(flashinfer.forward(q, k, v, 0, plain_batch, scale), plain)
        report("flashinfer BatchDecode", fi_us, plain_bytes, error=fi_error)

    cascade_batch = with_identity(make_batch(contexts, device), contexts)
    if not triton.wants_eager(cascade_batch):
        print("the cascade does not pay for this batch (see TritonBackend.min_saved_bytes)")
        return
    triton.prepare(cascade_batch)  # first sight of every request: prefixes compared
    began = time.perf_counter()
    for _ in range(5):  # steady state: every request known
        triton.prepare(cascade_batch)
    prepare_us = (time.perf_counter() - began) / 5 * 1e6
    plan = triton.step_cascade
    shared = plan.shared_lens.tolist()
    tiles = plan.tiles.tolist()
    cascade_kv = (sum(tile[0] for tile in tiles) + sum(len(c) - s for c, s in zip(contexts, shared))) * row_bytes
    num_grouped = sum(1 for s in shared if s)
    forward = lambda: triton.forward(q, k, v, 0, cascade_batch, scale)  # noqa: E731
    print(f"cascade: {plan.num_tiles} tiles of <= {plan.max_members} members, BLOCK_M {plan.block_m}, "
          f"{plan.num_suffix_splits} suffix splits")  # fmt: skip
    planned = plan.num_prefix_splits
    for splits in [planned] + [int(s) for s in args.prefix_splits.split(",") if s and int(s) != planned]:
        plan.num_prefix_splits = splits
        partials = partial_bytes * (splits * num_grouped / batch_size + plan.num_suffix_splits)
        us = time_us(forward, args.iters, device)
        name = f"triton cascade, {splits} prefix splits" + (" (planned)" if splits == planned else "")
        report(name, us, cascade_kv, int(partials), rel_error(forward(), plain))
    print(f"cascade prepare (host, steady state: grouping, planning, one upload): {prepare_us:.0f} us")


if __name__ == "__main__":
    main()
