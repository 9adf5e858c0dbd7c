"""Does decode attention overlap the projections? Two micro-batches on two streams (GPU; Llama-3.1-8B
layer shapes, bf16, dummy weights).

A large decode step runs its projections (compute-bound at these batches) and its attention
(bandwidth-bound) one after the other, so its floor is the sum of the two phases' bounds (the
"phase sum" of ``bench.roofline_bounds``). Split the batch into two halves A and B, and let A's
attention of layer l run on one stream while B's projections run on another: the step could
approach the larger phase instead of the sum. This probe measures whether the card delivers that,
before the engine is built for it. Each variant runs ``--layers`` layers in one CUDA graph:

* ``sequential``: the whole batch, projections then attention, layer by layer (the engine today);
* ``halves, one stream``: A's layer then B's layer (what halving the GEMMs costs by itself);
* ``halves, two streams``: A's chain on one stream, B's on another, their attention phases forced
  to alternate (events), so each half's attention meets the other's projections;
* the same with the projections' cuBLASLt kernels told to leave SMs to the attention
  (``torch._C._set_sm_carveout_experimental``), where this torch has it.

The layer: RMSNorm, qkv projection, decode attention (our Triton kernel: within ~5% of FlashInfer's
BatchDecode at these shapes, ``bench.cascade_kernels --parts large``; or the shared-prefix cascade
with ``--cascade``), o projection, RMSNorm, gate/up projection, SiLU-and-mul, down projection (RoPE and the K/V
store left out: a few percent of a step). Prints ms a step (32 layers) and the gain
over ``sequential``, and the outputs' error against the one-stream halves (same kernels: 0).

    python -m bench.overlap_probe [--batch 768 --context 256] [--cascade --groups 64 --members 16 --shared 2048 --own 256]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench.harness.roofline import measure_device
from bench.shared_prefix_attention import build_contexts, make_batch, rel_error, time_us, with_identity
from radixserve.attention import triton_cascade, triton_decode
from radixserve.attention.launch_configs import decode_splits, target_programs
from radixserve.attention.shared_prefix import SharedPrefixDecode
from radixserve.runner.kv_pool import KVPool

HIDDEN, INTERMEDIATE, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 4096, 14336, 32, 8, 128
MODEL_LAYERS = 32
QKV = (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=768, help="plain decode: requests")
    parser.add_argument("--context", type=int, default=256, help="plain decode: tokens per request")
    parser.add_argument("--cascade", action="store_true", help="shared-prefix batches through the cascade")
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--shared", type=int, default=2048)
    parser.add_argument("--own", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8, help="layers in the graph (times scale to 32)")
    parser.add_argument("--carveouts", default="0,16,32", help="SMs left to attention, comma separated")
    parser.add_argument("--iters", type=int, default=20)
    return parser.parse_args()


class Half:
    """One micro-batch: its rows' hidden state, its attention batch, and how to run its phases."""

    def __init__(self, contexts, pool: KVPool, cascade: bool, device):
        self.size = len(contexts)
        self.pool = pool
        self.batch = with_identity(make_batch(contexts, device), contexts)
        self.batch.kv_slots = self.batch.kv_slots.to(torch.int32)
        self.plan = None
        if cascade:
            planner = SharedPrefixDecode(pool, NUM_Q_HEADS, min_shared_prefix=256, min_saved_bytes=0)
            self.plan = planner.plan(self.batch)
            assert self.plan is not None, "the cascade did not plan this half"
        self.splits = decode_splits(target_programs(device), self.size * NUM_KV_HEADS, max(self.batch.seq_lens))
        gen = torch.Generator(device=device).manual_seed(self.size)
        self.x0 = torch.randn(self.size, HIDDEN, generator=gen, device=device, dtype=torch.bfloat16)

    def attention(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        k_pool, v_pool = self.pool.get(layer)
        out = torch.empty_like(q)
        b = self.batch
        if self.plan is not None:
            triton_cascade.cascade_decode_attention(
                q, k_pool, v_pool, out, b.qo_indptr, b.kv_indptr, b.kv_slots, self.plan, HEAD_DIM**-0.5
            )
        else:
            triton_decode.decode_attention(
                q, k_pool, v_pool, out, b.qo_indptr, b.kv_indptr, b.kv_slots, None, self.size, self.splits,
                HEAD_DIM**-0.5,
            )  # fmt: skip
        return out


class Weights:
    def __init__(self, layers: int, device):
        def w(rows, cols):
            return torch.randn(rows, cols, device=device, dtype=torch.bfloat16) * 0.02

        self.qkv = [w(QKV, HIDDEN) for _ in range(layers)]
        self.o = [w(HIDDEN, HIDDEN) for _ in range(layers)]
        self.gate_up = [w(2 * INTERMEDIATE, HIDDEN) for _ in range(layers)]
        self.down = [w(HIDDEN, INTERMEDIATE) for _ in range(layers)]


def chain(half: Half, weights: Weights, layers: int):
    """Half's layers as alternating phases: ``("gemm", fn)`` and ``("attn", fn)``; the state moves
    through a closure, so the phases must run in order (on one stream, or ordered by events)."""
    state = {"x": half.x0, "q": None, "a": None}

    def projections(layer: int):
        def run():
            if layer > 0:  # the previous layer's output side
                x = state["x"] + state["a"].view(half.size, HIDDEN) @ weights.o[layer - 1].T
                up = F.rms_norm(x, (HIDDEN,)) @ weights.gate_up[layer - 1].T
                x = x + (F.silu(up[:, :INTERMEDIATE]) * up[:, INTERMEDIATE:]) @ weights.down[layer - 1].T
                state["x"] = x
            if layer < layers:
                qkv = F.rms_norm(state["x"], (HIDDEN,)) @ weights.qkv[layer].T
                state["q"] = qkv[:, : NUM_Q_HEADS * HEAD_DIM].view(half.size, NUM_Q_HEADS, HEAD_DIM)

        return run

    def attention(layer: int):
        def run():
            state["a"] = half.attention(state["q"], layer)

        return run

    phases = []
    for layer in range(layers):
        phases += [("gemm", projections(layer)), ("attn", attention(layer))]
    phases.append(("gemm", projections(layers)))
    return phases, state


def sequential(halves, weights, layers):
    def run():
        for half in halves:  # one half = the whole batch, or each half in turn
            phases, state = chain(half, weights, layers)
            for _, fn in phases:
                fn()
            half.out = state["x"]

    return run


def two_streams(halves, weights, layers, streams):
    """A's and B's chains on their own streams; B's attention of layer l waits for A's, A's of
    layer l + 1 waits for B's of layer l: each attention phase meets the other half's projections.
    (An event must be recorded before a wait on it is queued, hence the host's layer-major order.)"""

    def run():
        main = torch.cuda.current_stream()
        built = [chain(half, weights, layers) for half in halves]
        chains = [phases for phases, _ in built]
        done = [[torch.cuda.Event() for _ in range(layers)] for _ in halves]
        for stream in streams:
            stream.wait_stream(main)
        for layer in range(layers):
            for h, stream in enumerate(streams):
                with torch.cuda.stream(stream):
                    chains[h][2 * layer][1]()  # projections into this layer
                    if h == 1:
                        stream.wait_event(done[0][layer])
                    elif layer > 0:
                        stream.wait_event(done[1][layer - 1])
                    chains[h][2 * layer + 1][1]()  # attention
                    done[h][layer].record(stream)
        for h, stream in enumerate(streams):
            with torch.cuda.stream(stream):
                chains[h][2 * layers][1]()
        for half, (_, state) in zip(halves, built):
            half.out = state["x"]
        for stream in streams:
            main.wait_stream(stream)

    return run


def graph_ms(run, iters: int, device) -> tuple[float, torch.cuda.CUDAGraph]:
    run()  # compiles and allocates outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return time_us(graph.replay, iters, device) / 1e3, graph


def main() -> None:
    args = parse_args()
    device = torch.device("cuda")
    speed = measure_device("bfloat16")
    if args.cascade:
        shape = SimpleNamespace(
            groups=args.groups, members=args.members, shared=args.shared, own=args.own, loners=0, shuffle=False
        )
        contexts = build_contexts(shape)  # group g's member m at m * groups + g
        in_a = [i % args.groups < args.groups // 2 for i in range(len(contexts))]
        title = f"cascade, {args.groups} groups x {args.members} x ({args.shared} shared + {args.own} own)"
    else:
        contexts = [list(range(1 + i * args.context, 1 + (i + 1) * args.context)) for i in range(args.batch)]
        in_a = [i < args.batch // 2 for i in range(args.batch)]
        title = f"plain decode, batch {args.batch} x {args.context}"
    pool = KVPool(max(max(c) for c in contexts) + 1, args.layers, NUM_KV_HEADS, HEAD_DIM, torch.bfloat16, device)
    for buffer in (*pool.k_buffers, *pool.v_buffers):
        buffer.normal_()
    weights = Weights(args.layers, device)
    whole = Half(contexts, pool, args.cascade, device)
    halves = [
        Half([c for c, a in zip(contexts, in_a) if a == want], pool, args.cascade, device) for want in (True, False)
    ]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    scale = MODEL_LAYERS / args.layers
    print(f"\n{title}; {speed.describe()}; {args.layers} layers timed, ms scaled to {MODEL_LAYERS}")

    rows = []
    ms, _ = graph_ms(sequential([whole], weights, args.layers), args.iters, device)
    rows.append(("sequential (the engine today)", ms * scale, None))
    base = ms
    ms, _ = graph_ms(sequential(halves, weights, args.layers), args.iters, device)
    want = [half.out.clone() for half in halves]
    rows.append(("halves, one stream (the reference of rel err)", ms * scale, None))
    ms, _ = graph_ms(two_streams(halves, weights, args.layers, streams), args.iters, device)
    rows.append(("halves, two streams", ms * scale, max(rel_error(h.out, w) for h, w in zip(halves, want))))
    if hasattr(torch._C, "_set_sm_carveout_experimental"):
        torch.backends.cuda.preferred_blas_library("cublaslt")
        for carveout in [int(c) for c in args.carveouts.split(",") if c]:
            torch._C._set_sm_carveout_experimental(carveout)
            try:
                ms, _ = graph_ms(two_streams(halves, weights, args.layers, streams), args.iters, device)
                err = max(rel_error(h.out, w) for h, w in zip(halves, want))
                rows.append((f"halves, two streams, GEMMs leave {carveout} SMs", ms * scale, err))
            except RuntimeError as exc:
                rows.append(
                    (f"halves, two streams, GEMMs leave {carveout} SMs: failed ({exc})"[:90], float("nan"), None)
                )
        torch._C._set_sm_carveout_experimental(None)
        torch.backends.cuda.preferred_blas_library("cublas")
    # the phases alone, for the bound: the whole batch's projections, then its attention
    gemms_ms = _phase_ms(whole, weights, args, "gemm", device) * scale
    attn_ms = _phase_ms(whole, weights, args, "attn", device) * scale
    print(f"phases alone: projections {gemms_ms:.2f} ms, attention {attn_ms:.2f} ms; "
          f"sum {gemms_ms + attn_ms:.2f}, larger {max(gemms_ms, attn_ms):.2f}")  # fmt: skip
    print(f"{'variant':<52}{'ms/step':>9}{'gain':>8}{'rel err':>10}")
    for name, ms, err in rows:
        gain = base * scale / ms if ms == ms else float("nan")
        print(f"{name:<52}{ms:>9.2f}{gain:>7.2f}x{'' if err is None else f'{err:>10.1e}'}")


def _phase_ms(half: Half, weights: Weights, args, kind: str, device) -> float:
    """One kind of phase of ``half``'s chain alone (the other kind run once beforehand for its inputs)."""
    phases, _ = chain(half, weights, args.layers)
    for _, fn in phases:
        fn()  # every intermediate exists; then time only this kind, in order
    chosen = [fn for k, fn in phases if k == kind]

    def run():
        for fn in chosen:
            fn()

    ms, _ = graph_ms(run, args.iters, device)
    return ms


if __name__ == "__main__":
    main()
