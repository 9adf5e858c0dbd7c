"""Online serving: the real server under Poisson arrivals (issue 5, workload c).

The ShareGPT-shaped workload of bench.offline_throughput (token-id prompts, ignore_eos, greedy)
is sent to ``radixserve serve`` (started by radixserve.server.launch with the same engine flags)
through streaming ``/generate`` from aiohttp, requests arriving as a Poisson process at each rate
in turn (h100: 4, 8 and 16 req/s, 200 requests per rate; the cache is flushed between rates).
Per rate: TTFT / ITL / TPOT / end-to-end p50 / p95 / p99 (SGLang bench_serving definitions) and
throughput; one JSONL record per rate (workload ``serving-rate-8`` ...). Next to them, from the
same run: latency floors from the card's measured speed (TTFT: a mean prompt's prefill; ITL: one
read of the weights) and, unless ``--skip-hf``, Hugging Face ``generate`` serving one request at a
time (its TTFT, its ITL and the request rate it could sustain).

  python -m bench.serving --preset h100
  python -m bench.serving --preset cpu
  python -m bench.serving --rates 8 --num-requests 500
"""

from __future__ import annotations

import asyncio

from bench.harness import cli, workloads
from bench.harness.hf_baseline import hf_latency
from bench.harness.http_client import poisson_run, post
from bench.harness.isolated import run_isolated
from bench.harness.latency_stats import summarize
from bench.harness.report import Reporter
from bench.harness.roofline import ModelShape, measure_device
from bench.harness.server import running_server, warm_up
from bench.harness.table import print_table

PRESETS = {
    "cpu": {"rates": "1,2", "num_requests": 12, "length_scale": 0.25},
    "h100": {"rates": "4,8,16", "num_requests": 200, "length_scale": 1.0},
}


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument(
        "--rates", help="comma-separated request rates in req/s; 'inf' sends all at once (h100: 4,8,16)"
    )
    parser.add_argument("--num-requests", type=int, help="requests per rate (h100: 200)")
    parser.add_argument("--length-scale", type=float, help="multiply the ShareGPT-shaped lengths (cpu: 0.25)")
    parser.add_argument("--skip-hf", action="store_true", help="no Hugging Face baseline")
    cli.add_engine_flags(parser)
    return parser


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    rates = [float(r) for r in args.rates.split(",")]
    setup = cli.model_setup(args)
    requests = workloads.sharegpt(args.num_requests, setup.vocab_limit, args.seed, args.length_scale)
    prompt, output = workloads.total_tokens(requests)
    print(
        f"{len(requests)} requests per rate, mean input {prompt / len(requests):.1f}, mean output {output / len(requests):.1f}"
    )
    speed = run_isolated(measure_device, setup.dtype_name)
    shape = ModelShape.from_config_dir(setup.config_dir, 4 if setup.dtype_name == "float32" else 2)
    mean_input, mean_output = round(prompt / len(requests)), output / len(requests)
    bounds = _bounds(shape, speed, mean_input)
    print(f"device: {speed.card}: {speed.describe()}; floors: {bounds}")
    if not args.skip_hf:
        bounds.update(_hf_one_at_a_time(args, setup, mean_input, mean_output))
    reporter = Reporter.from_args(args, setup.label, speed.card)
    rows = []
    with running_server(setup.engine_kwargs) as url:
        warm_up(url, setup.vocab_limit)
        for number, rate in enumerate(rates):
            post(url, "/flush_cache")
            timings = asyncio.run(poisson_run(url, requests, rate, args.seed + number))
            summary = summarize(timings)
            failed = [t.error for t in timings if not t.ok]
            notes = f"Poisson {rate:g} req/s, {len(requests)} requests, streaming /generate"
            if failed:
                notes += f"; {len(failed)} failed, first: {failed[0]}"
            record = reporter.record(
                f"serving-rate-{rate:g}", summary, notes, request_rate=rate, engine_args=setup.engine_kwargs, **bounds
            )
            rows.append(record)
            print(f"rate {rate:g}: {summary['num_completed']}/{len(timings)} done in {summary['duration_s']} s")
    print_table(
        rows,
        [
            ("request_rate", "req/s in"),
            ("num_completed", "done"),
            ("request_s", "req/s out"),
            ("output_tok_s", "out tok/s"),
            ("ttft_p50_ms", "TTFT p50"),
            ("ttft_p95_ms", "TTFT p95"),
            ("ttft_p99_ms", "TTFT p99"),
            ("itl_p50_ms", "ITL p50"),
            ("itl_p95_ms", "ITL p95"),
            ("itl_p99_ms", "ITL p99"),
            ("tpot_p50_ms", "TPOT p50"),
            ("tpot_p95_ms", "TPOT p95"),
            ("tpot_p99_ms", "TPOT p99"),
            ("roofline_ttft_ms", "TTFT floor"),
            ("roofline_itl_ms", "ITL floor"),
            ("hf_ttft_ms", "HF TTFT"),
            ("hf_itl_ms", "HF ITL"),
            ("hf_max_request_s", "HF max req/s"),
        ],
        title=f"serving (ms), {setup.label}, {reporter.card}, commit {reporter.commit}",
    )


def _bounds(shape: ModelShape, speed, mean_input: int) -> dict:
    """Latency floors from the card's measured speed: a first token needs at least the prefill of a
    mean prompt (or one read of the weights), and any decode step one read of the weights."""
    weight_read = shape.weight_read_seconds(speed)
    return {
        "roofline_ttft_ms": round(max(shape.prefill_seconds(speed, mean_input, 0), weight_read) * 1e3, 2),
        "roofline_itl_ms": round(weight_read * 1e3, 2),
    }


def _hf_one_at_a_time(args, setup, mean_input: int, mean_output: float) -> dict:
    """HF ``generate`` serving requests one at a time, measured in this run on a mean-sized
    prompt: its TTFT (prompt forward and first token, no queueing), its ITL (a batch-1 decode step)
    and the request rate it could sustain at all (one request after the other)."""
    pretrained = setup.engine_kwargs.get("load_format") != "dummy"
    hf = run_isolated(
        hf_latency,
        str(setup.config_dir),
        setup.dtype_name,
        [1],
        mean_input,
        16,
        setup.vocab_limit,
        pretrained,
        args.seed,
    )[1]
    per_request_s = (hf["prefill_ms"] + (mean_output - 1) * hf["decode_ms_per_step"]) / 1e3
    result = {
        "hf_ttft_ms": hf["prefill_ms"],
        "hf_itl_ms": hf["decode_ms_per_step"],
        "hf_max_request_s": round(1 / per_request_s, 3),
    }
    print(f"HF generate, one request at a time ({mean_input} in, {mean_output:.0f} out): {result}")
    return result


if __name__ == "__main__":
    main()
