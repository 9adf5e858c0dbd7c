"""The scheduler on a GPU-sized workload, without a GPU: what a policy admits, hits and recomputes.

The real ``Scheduler`` and ``PrefixCache`` (both pure Python) run the ``shared-prefix`` workload at
the H100 preset's size with a constrained KV pool, one synchronous step at a time; each step's
"device" is the roofline model of that step (Llama-3.1-8B in bf16 on the card whose bandwidth and
FLOP/s are given: max(weights + KV read, FLOPs) per step), and the sampled tokens are arbitrary
(distinct per request). Per policy it prints:

- the hit rate (Σ cached / Σ prompt tokens at first admission) next to the workload's maximum;
- the tokens prefilled in all (a retracted or evicted prefix computed again counts again, and so
  do a retracted request's outputs);
- retractions and steps;
- the modeled device time and the scheduler's own host time per step, measured here (mean, max);
  with ``--cascade``, a decode step's shared prefixes are read once per group, as the engine's
  shared-prefix cascade does (groups found from the real slot lists by the engine's own
  ``PrefixGrouper``, under the same minimum saving); with ``--phases``, each step is bounded by its
  projections' max(bytes, FLOPs) plus its attention's (``ModelShape.decode_step_seconds(phases=True)``);
- the modeled run time (device + host, one after the other) and output tok/s from it.

It answers in seconds what a 10-minute GPU run would, apart from the kernels' own efficiency: how
much a policy recomputes, and whether its host time per step stays below the device's.

  python -m bench.schedule_sim                          # 64 x 16 x (2048 + 128), 256 out, pool 65,536
  python -m bench.schedule_sim --pool-tokens 32768 --policies lpm,fcfs
  python -m bench.schedule_sim --workload sharegpt --pool-tokens 828013 --policies lpm
                                   # workload (a), against its roofline: what the schedule itself costs
  python -m bench.schedule_sim --pool-tokens 828013 --policies lpm --cascade --phases
                                   # the cache-on shared-prefix run as the GPU runs it (unconstrained pool)
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

from bench.harness import workloads
from bench.harness.prefix_index import prefix_hits
from bench.harness.roofline import DeviceSpeed, ModelShape, workload_roofline
from bench.harness.table import print_table
from radixserve.attention import AUTO_MIXED_DECODE_SPLIT
from radixserve.attention.prefix_groups import MIN_SAVED_BYTES, PrefixGrouper
from radixserve.cache.prefix_cache import PrefixCache
from radixserve.config import SchedulerConfig
from radixserve.core.plan import SequenceResult, StepPlan, StepResult
from radixserve.core.request import Request
from radixserve.core.sampling_params import SamplingParams
from radixserve.scheduler.scheduler import Scheduler

LLAMA_8B = Path(__file__).parent / "models" / "llama-3.1-8b"
COLUMNS = [
    ("policy", "policy"),
    ("hit_rate", "hit rate"),
    ("max_hit_rate", "max hit"),
    ("prefilled", "prefilled"),
    ("retractions", "retractions"),
    ("steps", "steps"),
    ("device_s", "device s"),
    ("host_ms_per_step", "host ms/step"),
    ("host_max_ms", "host max ms"),
    ("run_s", "run s"),
    ("output_tok_s", "out tok/s"),
    ("device_pct_roof", "device % roof"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="lpm,dfs-weight,fcfs")
    parser.add_argument("--workload", default="shared-prefix", choices=("shared-prefix", "sharegpt"))
    parser.add_argument("--sharegpt-requests", type=int, default=1000)
    parser.add_argument("--disable-mixed-chunk", action="store_true", help="prefill chunks in steps of their own")
    parser.add_argument("--pool-tokens", type=int, default=65536, help="KV pool (default: the GPU policies run's)")
    parser.add_argument("--num-groups", type=int, default=64)
    parser.add_argument("--prompts-per-group", type=int, default=16)
    parser.add_argument("--system-len", type=int, default=2048)
    parser.add_argument("--question-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--max-running-requests", type=int, default=1024)
    parser.add_argument("--chunked-prefill-size", type=int, default=8192)
    parser.add_argument("--copy-gb-s", type=float, default=4245.0, help="device bandwidth (default: the H200 runs)")
    parser.add_argument("--matmul-tflop-s", type=float, default=783.36, help="bf16 GEMM rate (default: the H200 runs)")
    parser.add_argument("--new-token-ratio", type=float, default=SchedulerConfig.new_token_ratio)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cascade", action="store_true", help="decode steps read shared prefixes once per group")
    parser.add_argument("--phases", action="store_true", help="bound each step phase by phase (GEMMs + attention)")
    args = parser.parse_args()

    shape = ModelShape.from_config_dir(LLAMA_8B, dtype_bytes=2)
    speed = DeviceSpeed("modeled", args.copy_gb_s * 1e9, args.matmul_tflop_s * 1e12, "bf16")
    if args.workload == "sharegpt":
        requests = workloads.sharegpt(args.sharegpt_requests, shape.vocab_size, args.seed)
    else:
        requests = workloads.shared_prefix(
            args.num_groups,
            args.prompts_per_group,
            args.system_len,
            args.question_len,
            args.output_len,
            shape.vocab_size,
            args.seed,
        )
    hits = prefix_hits([r.prompt_ids for r in requests])
    max_hit = sum(hits) / sum(r.prompt_len for r in requests)
    bound = workload_roofline(shape, speed, requests, hits, args.max_running_requests, args.pool_tokens)
    context_length = max(r.prompt_len + r.output_len for r in requests) + 1
    rows = []
    for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
        config = SchedulerConfig(
            max_running_requests=args.max_running_requests,
            chunked_prefill_size=args.chunked_prefill_size,
            schedule_policy=name,
            new_token_ratio=args.new_token_ratio,
            context_length=context_length,
            mixed_chunk=not args.disable_mixed_chunk,
        )
        row = simulate(name, config, args.pool_tokens, requests, shape, speed, args.cascade, args.phases)
        device_tok_s = sum(r.output_len for r in requests) / row["device_s"]
        rows.append({**row, "max_hit_rate": max_hit, "device_pct_roof": 100 * device_tok_s / bound.output_tok_s})
        print(f"{name}: {row['run_s']:.1f} s modelled", flush=True)
    shape_text = (
        f"shared-prefix {args.num_groups}x{args.prompts_per_group}, S {args.system_len}, Q {args.question_len}, "
        f"O {args.output_len}"
        if args.workload == "shared-prefix"
        else f"sharegpt x {len(requests)}"
    )
    print(
        f"\nscheduler simulation: {shape_text}; pool {args.pool_tokens:,} tokens; device modeled as Llama-3.1-8B "
        f"bf16 at {args.copy_gb_s:.0f} GB/s, {args.matmul_tflop_s:.0f} TFLOP/s; the workload's roofline "
        f"{bound.output_tok_s:,.0f} out tok/s ({bound.seconds:.1f} s)"
    )
    print_table(rows, COLUMNS)


def simulate(
    name, config, pool_tokens, requests, shape: ModelShape, speed: DeviceSpeed, cascade=False, phases=False
) -> dict:
    scheduler = Scheduler(config, PrefixCache(pool_tokens))
    grouper = PrefixGrouper() if cascade else None
    for i, bench_request in enumerate(requests):
        sampling = SamplingParams(max_new_tokens=bench_request.output_len, ignore_eos=True)
        scheduler.add_request(Request(f"r{i}", list(bench_request.prompt_ids), sampling))
    steps = prefilled = 0
    device_s = host_s = host_max = 0.0
    while scheduler.has_work:
        started = time.perf_counter()
        plan = scheduler.schedule()
        host = time.perf_counter() - started
        # a token of its own for every request and step, so that outputs share no cache nodes
        tokens = {
            s.request_id: SequenceResult(s.request_id, 100 + (zlib.crc32(s.request_id.encode()) + s.seq_len) % 40000)
            for s in plan.sequences
            if s.sample
        }
        started = time.perf_counter()
        scheduler.update(plan, StepResult(tokens))
        host += time.perf_counter() - started
        steps += 1
        host_s += host
        host_max = max(host_max, host)
        saved = _cascade_saved_tokens(grouper, plan, shape) if grouper is not None else 0
        device_s += step_seconds(plan, shape, speed, saved, phases)
        prefilled += sum(len(s.input_ids) for s in plan.sequences if not _is_decode(s))
    cache = scheduler.cache
    total_s = device_s + host_s
    return {
        "policy": name,
        "hit_rate": cache.num_hit_tokens / cache.num_query_tokens,
        "prefilled": prefilled,
        "retractions": scheduler.num_retractions,
        "steps": steps,
        "device_s": device_s,
        "host_ms_per_step": 1e3 * host_s / steps,
        "host_max_ms": 1e3 * host_max,
        "run_s": total_s,
        "output_tok_s": sum(r.output_len for r in requests) / total_s,
    }


def _is_decode(sequence) -> bool:
    """One new token past the prompt: a decode (a retracted request's recomputed outputs are not)."""
    return len(sequence.input_ids) == 1 and sequence.prefix_len >= len(sequence.prompt_ids)


def _cascade_saved_tokens(grouper: PrefixGrouper, plan: StepPlan, shape: ModelShape) -> int:
    """K/V rows a step's decodes need not read: their shared prefixes read once per group, when the
    saving reaches the engine's threshold (``prefix_groups.MIN_SAVED_BYTES`` a layer) — in a pure
    decode step, or in a mixed step with at least ``AUTO_MIXED_DECODE_SPLIT`` decodes (which the
    FlashInfer backend runs apart from the prefill rows, on the cascade where it pays)."""
    sequences = [s for s in plan.sequences if len(s.input_ids) == 1]
    if not sequences or (len(sequences) < len(plan.sequences) and len(sequences) < AUTO_MIXED_DECODE_SPLIT):
        return 0
    groups = grouper.group(
        [s.slots for s in sequences],
        [s.request_id for s in sequences],
        [s.seq_len for s in sequences],
        [s.slots_version for s in sequences],
    )
    layer_row_bytes = shape.kv_bytes_per_token // shape.num_layers
    return groups.num_saved_tokens if groups.num_saved_tokens * layer_row_bytes >= MIN_SAVED_BYTES else 0


def step_seconds(
    plan: StepPlan, shape: ModelShape, speed: DeviceSpeed, saved_tokens: int = 0, phases: bool = False
) -> float:
    """The step at its roofline: every weight read once, each context's K/V read once but the
    ``saved_tokens`` a cascade skips, FLOPs of every new token's projections and its attention over
    its context; the max of bytes and FLOPs over the step, or with ``phases`` the projections'
    bound plus attention's."""
    tokens = plan.num_tokens
    context = sum(s.seq_len for s in plan.sequences) - saved_tokens
    pairs = sum(
        len(s.input_ids) * s.prefix_len + len(s.input_ids) * (len(s.input_ids) + 1) // 2 for s in plan.sequences
    )
    return shape.step_seconds(speed, tokens, context, pairs, phases)


if __name__ == "__main__":
    main()
