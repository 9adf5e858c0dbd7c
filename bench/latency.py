"""Single-batch latency: prefill and decode of one batch at a time (issue 5, workload d).

For each batch size (h100: 1, 32, 256) one batch of random prompts of ``--input-len`` tokens
(h100: 1024, the length of workload b; the cache flushed first) is added to the in-process engine
at once and stepped to completion:
- prefill ms: from adding the batch until every request has its first token (the engine may
  split it into chunks of --chunked-prefill-size tokens; h100 preset: 16384);
- decode ms/step: the median step time once every request is decoding (``--decode-steps`` steps),
  and decode tok/s = batch / that;
- against the roofline measured in the same run, and for every batch the decode step over the
  time to read the weights once (goal at batch 1: within 1.3x);
- next to Hugging Face ``generate`` on the same model, card and batch in the same run (unless
  ``--skip-hf``): its prefill (one new token) and its decode ms per step.
One JSONL record per batch size (workload ``latency-bs1`` ...).

  python -m bench.latency --preset h100
  python -m bench.latency --preset cpu
  python -m bench.latency --batch-sizes 1,64 --input-len 2048
  python -m bench.latency --variant "--triton-decode-max-bs 63"   # plain and variant side by side
"""

from __future__ import annotations

import statistics
import time

from bench.harness import cli, workloads
from bench.harness.engine_runs import drive, flush
from bench.harness.hf_baseline import hf_latency
from bench.harness.isolated import run_isolated
from bench.harness.report import Reporter
from bench.harness.roofline import ModelShape, measure_device
from bench.harness.table import print_table

PRESETS = {
    "cpu": {"batch_sizes": "1,4,16", "input_len": 128, "decode_steps": 8},
    "h100": {"batch_sizes": "1,32,256", "input_len": 1024, "decode_steps": 32, "chunked_prefill_size": 16384},
}


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument("--batch-sizes", help="comma-separated (h100: 1,32,256)")
    parser.add_argument("--input-len", type=int, help="prompt tokens per request (h100: 1024)")
    parser.add_argument("--decode-steps", type=int, help="decode steps timed per batch (h100: 32)")
    parser.add_argument("--skip-hf", action="store_true", help="no Hugging Face baseline")
    cli.add_engine_flags(parser)
    cli.add_variant_flag(parser)
    return parser


def measure_batches(engine_kwargs: dict, batch_sizes: list[int], input_len: int, steps: int, vocab: int, seed: int):
    """In a child: per batch size, (prefill seconds, [decode step seconds])."""
    from radixserve import Engine

    engine = Engine(**engine_kwargs)
    core = engine.core
    drive(core, workloads.fixed_random(2, 64, 4, vocab, seed + 999), "warmup")
    results = {}
    for batch in batch_sizes:
        flush(engine)
        requests = workloads.fixed_random(batch, input_len, steps + 1, vocab, seed + batch)
        results[batch] = _one_batch(core, requests)
    engine.shutdown()
    return results


def _one_batch(core, requests) -> tuple[float, list[float]]:
    from radixserve.core.sampling_params import SamplingParams

    start = time.perf_counter()
    for number, request in enumerate(requests):
        params = SamplingParams.from_dict(
            {"max_new_tokens": request.output_len, "temperature": 0.0, "ignore_eos": True}
        )
        core.add_request(f"latency-{len(requests)}-{number}", request.prompt_ids, params)
    started: set[str] = set()
    prefill = None
    decode_steps = []
    finished = 0
    while finished < len(requests):
        step_start = time.perf_counter()
        outputs = core.step()
        now = time.perf_counter()
        if prefill is not None and len(outputs) == len(requests):
            decode_steps.append(now - step_start)
        started.update(o.request_id for o in outputs if o.new_token_ids)
        finished += sum(o.finished for o in outputs)
        if prefill is None and len(started) == len(requests):
            prefill = now - start
    while core.has_work:  # with the overlap schedule a step may still be in flight
        core.step()
    return prefill, decode_steps


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    setup = cli.model_setup(args)
    speed = run_isolated(measure_device, setup.dtype_name)
    shape = ModelShape.from_config_dir(setup.config_dir, 4 if setup.dtype_name == "float32" else 2)
    print(f"device: {speed.card}: {speed.describe()}\nmodel: {setup.label}: {shape.describe()}")
    reporter = Reporter.from_args(args, setup.label, speed.card)
    weight_read = shape.weight_read_seconds(speed)
    hf = {} if args.skip_hf else _hf_baseline(args, setup, batch_sizes)
    rows = []
    for variant, engine_kwargs in cli.variants(args, setup.engine_kwargs):
        measured = run_isolated(
            measure_batches, engine_kwargs, batch_sizes, args.input_len, args.decode_steps, setup.vocab_limit, args.seed
        )
        for batch in batch_sizes:
            summary = _summary(measured[batch], batch, args, shape, speed, weight_read)
            if batch in hf:
                summary.update(_versus_hf(hf[batch], summary, batch))
            notes = "decode tok/s = batch / median decode step; weight read = weight bytes / measured copy bandwidth"
            notes += f"; variant {variant}" if variant else ""
            record = reporter.record(
                f"latency-bs{batch}", summary, notes, device_speed=speed.describe(), engine_args=engine_kwargs
            )
            rows.append({**record, "variant": variant or "-"})
    print_table(
        rows,
        [
            ("variant", "variant"),
            ("batch", "batch"),
            ("input_len", "input"),
            ("prefill_ms", "prefill ms"),
            ("roofline_prefill_ms", "roof ms"),
            ("prefill_tok_s", "prefill tok/s"),
            ("decode_ms_per_step", "decode ms/step"),
            ("roofline_decode_ms", "roof ms"),
            ("output_tok_s", "decode tok/s"),
            ("weight_read_ms", "weight read ms"),
            ("decode_vs_weight_read", "decode / weight read"),
            ("hf_prefill_ms", "HF prefill ms"),
            ("hf_decode_ms_per_step", "HF decode ms/step"),
            ("decode_vs_hf", "x HF decode"),
        ],
        title=f"latency, {setup.label}, {speed.card}, commit {reporter.commit} (goal: batch 1 decode <= 1.3x weight read)",
    )


def _hf_baseline(args, setup, batch_sizes: list[int]) -> dict[int, dict]:
    """HF ``generate`` on the same model, card and batches, in this run (bench.harness.hf_baseline)."""
    pretrained = setup.engine_kwargs.get("load_format") != "dummy"
    hf = run_isolated(
        hf_latency,
        str(setup.config_dir),
        setup.dtype_name,
        batch_sizes,
        args.input_len,
        args.decode_steps,
        setup.vocab_limit,
        pretrained,
        args.seed,
    )
    for batch in batch_sizes:
        print(f"HF generate, batch {batch} x {args.input_len} in: {hf[batch]}")
    return hf


def _versus_hf(hf: dict, summary: dict, batch: int) -> dict:
    return {
        "hf_prefill_ms": hf["prefill_ms"],
        "hf_decode_ms_per_step": hf["decode_ms_per_step"],
        "hf_output_tok_s": round(batch / hf["decode_ms_per_step"] * 1e3, 2),
        "decode_vs_hf": round(hf["decode_ms_per_step"] / summary["decode_ms_per_step"], 2),
    }


def _summary(measured, batch: int, args, shape: ModelShape, speed, weight_read: float) -> dict:
    prefill, steps = measured
    decode = statistics.median(steps)
    context = batch * (args.input_len + args.decode_steps // 2)
    roof_decode = shape.decode_step_seconds(speed, batch, context)
    roof_prefill = max(batch * shape.prefill_seconds(speed, args.input_len, 0), weight_read)
    return {
        "num_requests": batch,
        "output_tok_s": round(batch / decode, 2),
        "roofline_output_tok_s": round(batch / roof_decode, 2),
        "batch": batch,
        "input_len": args.input_len,
        "prefill_ms": round(prefill * 1e3, 2),
        "prefill_tok_s": round(batch * args.input_len / prefill, 1),
        "roofline_prefill_ms": round(roof_prefill * 1e3, 2),
        "decode_ms_per_step": round(decode * 1e3, 3),
        "roofline_decode_ms": round(roof_decode * 1e3, 3),
        "weight_read_ms": round(weight_read * 1e3, 3),
        "decode_vs_weight_read": round(decode / weight_read, 2),
        "decode_steps_timed": len(steps),
    }


if __name__ == "__main__":
    main()
