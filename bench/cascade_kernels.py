"""Launch configurations of the decode kernels, timed one part at a time (GPU; one layer, Llama-3-8B shapes, bf16).

For the shared-prefix cascade at the `shared-prefix` workload's decode shape (64 groups x 16
requests, 2,048 shared tokens, each request's own tokens at several lengths), and for the plain
Triton decode at small batches (what ``--triton-decode-max-bs`` routes to it), times with CUDA
events (median of ``--iters``):

* the prefix kernel (each group's prefix read once per tile) for every block width, warp count,
  pipeline depth and split count of the grid, and (rows "by address") reading each prefix's K/V
  rows by address instead of through their slot ids (the sweep's prefixes are consecutive runs);
* the suffix kernel (each request's own tokens) for every block width, warp count and depth, and
  FlashInfer's BatchDecode over the same own tokens (compacted index list; returns its
  log-sum-exp too, as a cascade would need), with and without tensor cores;
* the merge;
* the plain decode (both stages) at batch 1 and 32 over 1,024-token contexts, 32 layers in a CUDA
  graph (the default marked splits as a captured step does: ``triton_backend.graph_splits``);
* with ``--parts large``, the same at large batches (``--large``, e.g. 768 x 256: workload (a)'s
  decode steps) next to FlashInfer's BatchDecode (what the engine runs there by default) with tensor
  cores, with tensor cores and no split-KV, and on CUDA cores: which kernel should take large decode
  batches of short contexts (FlashInfer's rows are printed wherever they rank);

and prints, per part, every configuration's time, its K/V read rate against the card's copy
bandwidth measured in the same run, and its output error against the default configuration's
(a configuration that breaks the kernel shows up there). The current defaults are marked.

    python -m bench.cascade_kernels [--own 129,256,384] [--iters 20] [--quick] [--parts cascade,plain,large]
    python -m bench.cascade_kernels --parts large --large 768x512 --decoded 256   # decode-step slot layout
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from types import SimpleNamespace

import torch

from bench import flashinfer_rows
from bench.harness.roofline import measure_device
from bench.shared_prefix_attention import build_contexts, make_batch, rel_error, time_us, with_identity
from radixserve.attention import launch_configs, triton_cascade, triton_decode
from radixserve.attention.launch_configs import LaunchConfig, decode_splits, graph_splits, target_programs
from radixserve.attention.shared_prefix import SharedPrefixDecode
from radixserve.runner.kv_pool import KVPool

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128
LAYERS = 32  # the plain decode's graph: one layer over each of this many pools
LARGE_LAYERS = 4  # at large batches (each layer's K/V alone is far past L2)
ROW_BYTES = NUM_KV_HEADS * HEAD_DIM * 2 * 2  # K and V of one token, one layer, bf16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--shared", type=int, default=2048)
    parser.add_argument(
        "--own", default="129,256,384", help="own tokens per request (incl. the new one), comma separated"
    )
    parser.add_argument("--small-batches", default="1,32", help="plain decode batch sizes, comma separated")
    parser.add_argument("--small-context", type=int, default=1024)
    parser.add_argument(
        "--large",
        default="256x1024,768x256,768x512,1024x256",
        help="large decode shapes, BATCHxCONTEXT, comma separated",
    )
    parser.add_argument(
        "--decoded",
        type=int,
        default=0,
        help="large shapes: each context's last N tokens laid out as decode steps allocate them "
        "(one slot per request per step, a step's slots consecutive) instead of one run per request",
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a smaller grid (a smoke run)")
    parser.add_argument("--top", type=int, default=8, help="configurations printed per part (and the default)")
    parser.add_argument("--parts", default="cascade,plain", help="cascade, plain, large (comma separated)")
    return parser.parse_args()


def grid(quick: bool, warps: tuple[int, ...]) -> list[LaunchConfig]:
    blocks, stages = ((64,), (2,)) if quick else ((32, 64, 128), (1, 2, 3, 4))
    return [LaunchConfig(b, w, s) for b, w, s in itertools.product(blocks, warps[:1] if quick else warps, stages)]


class Table:
    def __init__(self, title: str, copy_bytes_s: float, top: int):
        self.title, self.copy, self.top, self.rows = title, copy_bytes_s, top, []

    def add(self, name: str, us: float, kv_bytes: int, error: float, default: bool = False, pinned: bool = False):
        """``default``: the engine's launch (marked); ``pinned`` rows (another library's kernel, for
        comparison) are printed wherever they rank, as the default is."""
        self.rows.append((us, name + (" (default)" if default else ""), kv_bytes, error, default or pinned))

    def print(self) -> None:
        print(f"\n{self.title}")
        print(f"{'configuration':<44} {'us':>9} {'GB/s':>7} {'% copy':>7} {'rel err':>9}")
        ranked = sorted(self.rows, key=lambda row: row[0])
        # the fastest, then the default, pinned rows and any launch that does not fit, wherever they rank
        shown = ranked[: self.top] + [row for row in ranked[self.top :] if row[4] or row[0] == float("inf")]
        for us, name, kv_bytes, error, _ in shown:
            rate = kv_bytes / us / 1e3
            print(f"{name:<44} {us:9.1f} {rate:7.0f} {100 * rate * 1e9 / self.copy:6.1f}% {error:9.1e}")
        if len(ranked) > len(shown):
            print(f"({len(ranked) - len(shown)} slower configurations not shown)")


def describe(config: LaunchConfig) -> str:
    return f"block_n {config.block_n}, {config.num_warps} warps, {config.num_stages} stages"


def cascade_parts(args, own: int, device, copy_bytes_s: float) -> None:
    shape = SimpleNamespace(
        groups=args.groups, members=args.members, shared=args.shared, own=own, loners=0, shuffle=False
    )
    contexts = build_contexts(shape)
    pool = KVPool(max(max(c) for c in contexts) + 1, 1, NUM_KV_HEADS, HEAD_DIM, torch.bfloat16, device)
    for buffer in (*pool.k_buffers, *pool.v_buffers):
        buffer.normal_()
    k_pool, v_pool = pool.get(0)
    batch = with_identity(_int32_slots(make_batch(contexts, device)), contexts)
    is_tuned = launch_configs.tuned(device, torch.bfloat16)
    planner = SharedPrefixDecode(pool, NUM_Q_HEADS, min_shared_prefix=256, min_saved_bytes=0)
    plan = planner.plan(batch)
    assert plan is not None, "the cascade did not plan this batch"
    size = len(contexts)
    gen = torch.Generator(device=device).manual_seed(1)
    q = torch.randn(size, NUM_Q_HEADS, HEAD_DIM, generator=gen, device=device, dtype=torch.bfloat16)
    scale = HEAD_DIM**-0.5
    layout = (q, k_pool, v_pool, batch.qo_indptr, batch.kv_indptr, batch.kv_slots)
    print(f"\n=== cascade, {args.groups} groups x {args.members} x ({args.shared} shared + {own} own): "
          f"{plan.num_tiles} tiles, BLOCK_M {plan.block_m}, planned splits: prefix {plan.num_prefix_splits}, "
          f"suffix {plan.num_suffix_splits}")  # fmt: skip

    # the prefix kernel
    prefix_bytes = sum(tile[0] for tile in plan.tiles.tolist()) * ROW_BYTES
    default = launch_configs.prefix_config(plan.block_m, HEAD_DIM, is_tuned)
    want = triton_cascade.prefix_partials(*layout, plan, scale)
    table = Table(f"prefix kernel ({prefix_bytes / 1e9:.3f} GB of K/V)", copy_bytes_s, args.top)
    planned = plan.num_prefix_splits
    warps = (4, 8) if plan.block_m * HEAD_DIM < 128 * 128 else (8, 4)
    for config in dict.fromkeys([default, *grid(args.quick, warps)]):
        for splits in sorted({planned, planned * 2, planned * 4, max(1, planned // 2)}):
            plan.num_prefix_splits, plan.prefix_config = splits, config
            measure(
                table, f"{describe(config)}, {splits} splits", prefix_bytes, config == default and splits == planned,
                lambda: time_us(lambda: triton_cascade.prefix_partials(*layout, plan, scale), args.iters, device),
                lambda: _partials_error(triton_cascade.prefix_partials(*layout, plan, scale), want, plan.shared_lens),
            )  # fmt: skip
    # the same kernel addressing each prefix's K/V rows directly (the sweep's prefixes are consecutive
    # slot runs): what the slot-id loads cost
    plan.num_prefix_splits, plan.prefix_affine = planned, True
    for config in dict.fromkeys([default, *grid(args.quick, warps)]):
        plan.prefix_config = config
        measure(
            table, f"{describe(config)}, {planned} splits, by address", prefix_bytes, False,
            lambda: time_us(lambda: triton_cascade.prefix_partials(*layout, plan, scale), args.iters, device),
            lambda: _partials_error(triton_cascade.prefix_partials(*layout, plan, scale), want, plan.shared_lens),
        )  # fmt: skip
    plan.num_prefix_splits, plan.prefix_config, plan.prefix_affine = planned, None, False
    table.print()

    # the suffix kernel, and FlashInfer over the same keys
    shared = plan.shared_lens.tolist()
    suffix_bytes = sum(len(c) - s for c, s in zip(contexts, shared)) * ROW_BYTES
    default = launch_configs.suffix_config(HEAD_DIM, is_tuned)
    suffix = lambda config, splits: triton_decode.decode_partials(  # noqa: E731
        *layout, None, size, splits, scale, kv_offsets=plan.shared_lens, config=config
    )
    want = _merged(*suffix(default, plan.num_suffix_splits))
    table = Table(f"suffix kernel ({suffix_bytes / 1e9:.3f} GB of K/V)", copy_bytes_s, args.top)
    for config in dict.fromkeys([default, *grid(args.quick, (4, 2, 8))]):
        for splits in sorted({plan.num_suffix_splits, 1, 2}):
            measure(
                table, f"{describe(config)}, {splits} splits", suffix_bytes,
                config == default and splits == plan.num_suffix_splits,
                lambda c=config, n=splits: time_us(lambda: suffix(c, n), args.iters, device),
                lambda c=config, n=splits: rel_error(_merged(*suffix(c, n)), want),
            )  # fmt: skip
    for tensor_cores, us, out in flashinfer_rows.suffix_rows(pool, contexts, shared, q, args.iters, device):
        table.add(
            f"flashinfer BatchDecode, tensor cores {tensor_cores}", us, suffix_bytes, rel_error(out, want), pinned=True
        )
    table.print()

    # the merge
    prefix = triton_cascade.prefix_partials(*layout, plan, scale)
    suffix_parts = suffix(default, plan.num_suffix_splits)
    out = torch.empty_like(q)
    us = time_us(
        lambda: triton_cascade.merge_partials(*prefix, *suffix_parts, out, batch.qo_indptr, plan), args.iters, device
    )
    partial_bytes = (prefix[0].numel() + suffix_parts[0].numel()) * 4
    print(f"\nmerge ({plan.merge_heads} heads a program): {us:.1f} us, reads {partial_bytes / 1e9:.3f} GB of partials")


def measure(table: Table, name: str, kv_bytes: int, default: bool, timed, error, pinned: bool = False) -> None:
    """``table.add`` of ``timed()`` microseconds and ``error()``; a launch that does not fit the
    card's shared memory (Triton's ``OutOfResources``) is listed as such instead of ending the sweep."""
    try:
        us = timed()
    except Exception as exc:  # noqa: BLE001 (Triton's error class moves between versions)
        if type(exc).__name__ != "OutOfResources":
            raise
        table.add(f"{name}: does not fit ({exc})"[:120], float("inf"), kv_bytes, float("nan"), default)
        return
    table.add(name, us, kv_bytes, error(), default, pinned)


def _graph_time(step, splits: int, config: LaunchConfig, layers: int, iters: int, device) -> float:
    """Microseconds a layer of ``step(splits, config)`` (every layer) replayed from a CUDA graph."""
    step(splits, config)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(splits, config)
    return time_us(graph.replay, iters, device) / layers


def _int32_slots(batch):
    """The engine's slot lists are int32 (the slot table, the graph runner): so are the sweep's,
    or it would time other compiled variants."""
    batch.kv_slots = batch.kv_slots.to(torch.int32)
    return batch


def _merged(part_out: torch.Tensor, part_lse: torch.Tensor) -> torch.Tensor:
    """Splits merged by log-sum-exp (torch): [B, Hq, D]."""
    weights = torch.softmax(part_lse * 0.6931471805599453, dim=-1).nan_to_num(0.0)
    return (part_out * weights[..., None]).sum(dim=2)


def _partials_error(got, want, shared_lens) -> float:
    grouped = shared_lens > 0
    return rel_error(_merged(*got)[grouped], _merged(*want)[grouped])


def plain_decode(args, device, copy_bytes_s: float) -> None:
    """Each configuration runs a layer over each of ``LAYERS`` pools in one CUDA graph (as a
    graph-captured decode step does; a batch's K/V then comes from memory, not from L2)."""
    for batch_size in [int(b) for b in args.small_batches.split(",") if b]:
        plain_decode_batch(args, batch_size, args.small_context, device, copy_bytes_s, flashinfer=False)


def large_decode(args, device, copy_bytes_s: float) -> None:
    """Large decode batches (FlashInfer's by default): the Triton decode, captured as above, next to
    FlashInfer's BatchDecode with and without tensor cores (run eagerly, a layer over each pool in
    turn: at these sizes each kernel outlasts its launch)."""
    for shape in [s for s in args.large.split(",") if s]:
        batch_size, context = (int(n) for n in shape.split("x"))
        plain_decode_batch(args, batch_size, context, device, copy_bytes_s, flashinfer=True, decoded=args.decoded)


def plain_contexts(batch_size: int, context: int, decoded: int = 0) -> list[list[int]]:
    """Each request's slots: its first ``context - decoded`` in one run (a prefilled prompt), then
    ``decoded`` tokens laid out as decode steps allocate them: step t's slots for the whole batch
    consecutive, request r's at ``base + t * batch_size + r``. Slot 0 is the pool's dummy."""
    prompt = context - decoded
    contexts = [list(range(1 + i * prompt, 1 + (i + 1) * prompt)) for i in range(batch_size)]
    base = 1 + batch_size * prompt
    for r, slots in enumerate(contexts):
        slots.extend(base + t * batch_size + r for t in range(decoded))
    return contexts


def plain_decode_batch(
    args, batch_size: int, context: int, device, copy_bytes_s: float, flashinfer: bool, decoded: int = 0
) -> None:
    layers = LAYERS if batch_size < 64 else LARGE_LAYERS
    contexts = plain_contexts(batch_size, context, decoded)
    pool = KVPool(batch_size * context + 1, layers, NUM_KV_HEADS, HEAD_DIM, torch.bfloat16, device)
    for buffer in (*pool.k_buffers, *pool.v_buffers):
        buffer.normal_()
    batch = _int32_slots(make_batch(contexts, device))
    q = torch.randn(batch_size, NUM_Q_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    out = torch.empty(layers, *q.shape, device=device, dtype=q.dtype)
    planned = decode_splits(target_programs(device), batch_size * NUM_KV_HEADS, context)
    # a captured step's split count
    captured = graph_splits(target_programs(device), batch_size * NUM_KV_HEADS, launch_configs.MAX_GRAPH_SPLITS)
    kv_bytes = batch_size * context * ROW_BYTES

    def engine_config(splits: int, chunked: bool = False) -> LaunchConfig:  # as ``_split_stage`` picks it
        programs = batch_size * NUM_KV_HEADS * (1 if chunked else splits)
        return triton_decode.launch(HEAD_DIM, device, torch.bfloat16, programs, chunked)[0]

    default = engine_config(captured)
    chunked_config = engine_config(1, chunked=True)
    other = dataclasses.replace(chunked_config, num_stages=5 - chunked_config.num_stages)  # 2 <-> 3

    counters = torch.zeros(batch_size * NUM_KV_HEADS, dtype=torch.int32, device=device)

    merge_heads = triton_cascade.merge_heads_per_program(batch_size, NUM_Q_HEADS, target_programs(device))

    def step(
        splits: int, config: LaunchConfig, fused: bool = False, chunk_len: int = 0, heads_first: bool | None = None
    ) -> None:
        for layer in range(layers):
            k_pool, v_pool = pool.get(layer)
            triton_decode.decode_attention(
                q, k_pool, v_pool, out[layer], batch.qo_indptr, batch.kv_indptr, batch.kv_slots, None,
                batch_size, splits, HEAD_DIM**-0.5, config=config, counters=counters if fused else None,
                chunk_len=chunk_len, merge_heads=merge_heads, heads_first=heads_first,
            )  # fmt: skip

    step(captured, default)
    want = out.clone()
    spread = f", last {decoded} tokens laid out as decode steps allocate them" if decoded else ""
    title = f"=== plain decode, batch {batch_size} x {context}{spread} ({kv_bytes / 1e6:.1f} MB of K/V a layer)"
    table = Table(title + f", {layers} layers in a CUDA graph, per layer", copy_bytes_s, args.top)
    split_counts = {captured, planned, planned * 2, max(1, planned // 2)} if batch_size < 64 else {captured, 1, 2}
    for config in dict.fromkeys([default, *grid(args.quick, (4, 2, 8))]):
        for splits in sorted(split_counts):
            measure(
                table, f"{describe(config)}, {splits} splits", kv_bytes, config == default and splits == captured,
                lambda n=splits, c=config: _graph_time(step, n, c, layers, args.iters, device),
                lambda: rel_error(out, want),
            )  # fmt: skip
    layout = launch_configs.graph_layout(
        target_programs(device), batch_size, NUM_KV_HEADS, launch_configs.MAX_GRAPH_SPLITS, pool.num_slots - 1
    )
    variants = []  # (name, splits, step options): the engine's paths and candidates, listed wherever they rank
    if layout.chunk_len:  # a captured step of a batch that fills the card
        chunked, n, c = f"chunked: {layout.splits} x {layout.chunk_len} keys", layout.splits, layout.chunk_len
        variants += [
            (f"{chunked}, merged by the last chunk (the engine's graphs)", n, dict(fused=True, chunk_len=c)),
            (f"{chunked}, merge kernel", n, dict(chunk_len=c)),
            (
                f"{chunked}, merged by the last chunk, sequences first",
                n,
                dict(fused=True, chunk_len=c, heads_first=False),
            ),
            # the other stage count (with one call site in the kernel, 125 registers in two stages
            # against 162 in three on sm_90: four programs an SM against three)
            (f"{chunked}, merged by the last chunk, other stages", n, dict(fused=True, chunk_len=c, config=other)),
            ("1 split, sequences first", 1, dict(heads_first=False)),
        ]
    # the engine's default where contexts split evenly: the splits merge themselves
    variants += [(f"{n} splits, merge fused", n, dict(fused=True)) for n in sorted(split_counts) if n > 1]
    for name, splits, options in variants:  # each launched as the engine would launch it, or as named
        options = dict(options)
        config = options.pop("config", None) or engine_config(splits, options.get("chunk_len", 0) > 0)
        measure(
            table, f"{describe(config)}, {name}", kv_bytes, False,
            lambda n=splits, o=options, c=config: _graph_time(
                lambda m, c: step(m, c, **o), n, c, layers, args.iters, device
            ),
            lambda: rel_error(out, want), pinned=True,
        )  # fmt: skip
    if flashinfer:
        for name, us, got in flashinfer_rows.plain_rows(pool, contexts, q, layers, args.iters, device):
            table.add(f"flashinfer BatchDecode, {name}", us, kv_bytes, rel_error(got, want), pinned=True)
    table.print()


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.cascade_kernels times GPU kernels: it needs CUDA")
    device = torch.device("cuda")
    speed = measure_device("bfloat16")
    print(f"device: {speed.card}: {speed.describe()}")
    parts = args.parts.split(",")
    for own in [int(o) for o in args.own.split(",") if o and "cascade" in parts]:
        cascade_parts(args, own, device, speed.copy_bytes_s)
    if "plain" in parts:
        plain_decode(args, device, speed.copy_bytes_s)
    if "large" in parts:
        large_decode(args, device, speed.copy_bytes_s)


if __name__ == "__main__":
    main()
