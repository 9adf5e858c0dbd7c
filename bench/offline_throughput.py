"""Offline throughput: the in-process engine on a whole workload at once (issue 5, workloads a and b).

Workloads (token-id prompts, ignore_eos, greedy, fixed seed):
  sharegpt     ShareGPT-shaped lengths (bench/harness/workloads.py: log-normal, mean ≈ 215 in /
               200 out, clipped to [4, 2048] / [4, 1024]); 1,000 requests on h100.
  random-1024  fixed 1024 in / 1024 out; 1,000 requests on h100.

Per workload: output and total tok/s, TTFT / ITL / TPOT percentiles (all requests sent at t = 0),
the roofline measured on this card in the same run and our share of it, and Hugging Face
``generate`` on a representative subset (h100: sharegpt 256 x (220 in / 200 out), random-1024
64 x (1024 / 256)) next to our engine on the same subset. One JSONL record per workload in
bench/results/<workload>.jsonl.

  python -m bench.offline_throughput --preset h100                     # Llama-3.1-8B dummy, GPU
  python -m bench.offline_throughput --preset cpu                      # embedded model, tiny
  python -m bench.offline_throughput --workload sharegpt --sharegpt-requests 500 --skip-hf
  python -m bench.offline_throughput --workload sharegpt --skip-hf --variant "--mixed-decode-split 0"
                                       # the plain engine and the variant side by side, one run
"""

from __future__ import annotations

from bench.harness import cli, workloads
from bench.harness.engine_runs import EngineCase, run_engine_cases
from bench.harness.hf_baseline import HFSubset, hf_output_tok_s
from bench.harness.isolated import run_isolated
from bench.harness.prefix_index import prefix_hits
from bench.harness.report import Reporter, offline_summary
from bench.harness.roofline import ASSUMPTIONS, ModelShape, measure_device, workload_roofline
from bench.harness.table import print_table

WORKLOADS = ("sharegpt", "random-1024")
PRESETS = {
    "cpu": {
        "sharegpt_requests": 32,
        "length_scale": 0.25,
        "random_requests": 16,
        "random_input_len": 128,
        "random_output_len": 32,
        "hf_sharegpt": "16x55x50",
        "hf_random": "8x128x32",
    },
    "h100": {
        "sharegpt_requests": 1000,
        "length_scale": 1.0,
        "random_requests": 1000,
        "random_input_len": 1024,
        "random_output_len": 1024,
        "hf_sharegpt": "256x220x200",
        "hf_random": "64x1024x256",
    },
}


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument("--workload", default=",".join(WORKLOADS), help="comma-separated: sharegpt,random-1024")
    parser.add_argument("--sharegpt-requests", type=int, help="requests in sharegpt (h100: 1000)")
    parser.add_argument("--length-scale", type=float, help="multiply sharegpt lengths (cpu: 0.25)")
    parser.add_argument("--random-requests", type=int, help="requests in random-1024 (h100: 1000)")
    parser.add_argument("--random-input-len", type=int)
    parser.add_argument("--random-output-len", type=int)
    parser.add_argument("--skip-hf", action="store_true", help="no Hugging Face baseline")
    parser.add_argument("--hf-sharegpt", help="HF subset for sharegpt: BATCHxINxOUT (h100: 256x220x200)")
    parser.add_argument("--hf-random", help="HF subset for random-1024: BATCHxINxOUT (h100: 64x1024x256)")
    cli.add_engine_flags(parser)
    cli.add_variant_flag(parser)
    return parser


def parse_subset(text: str) -> HFSubset:
    batch, input_len, output_len = (int(x) for x in text.lower().split("x"))
    return HFSubset(batch, input_len, output_len)


def make_workload(name: str, args, vocab: int) -> list[workloads.BenchRequest]:
    if name == "sharegpt":
        return workloads.sharegpt(args.sharegpt_requests, vocab, args.seed, args.length_scale)
    if name == "random-1024":
        return workloads.fixed_random(
            args.random_requests, args.random_input_len, args.random_output_len, vocab, args.seed
        )
    raise SystemExit(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    names = [n.strip() for n in args.workload.split(",") if n.strip()]
    setup = cli.model_setup(args)
    requests = {name: make_workload(name, args, setup.vocab_limit) for name in names}
    subsets = {"sharegpt": parse_subset(args.hf_sharegpt), "random-1024": parse_subset(args.hf_random)}
    for name, reqs in requests.items():
        prompt, output = workloads.total_tokens(reqs)
        print(
            f"{name}: {len(reqs)} requests, mean input {prompt / len(reqs):.1f}, mean output {output / len(reqs):.1f}"
        )
    speed = run_isolated(measure_device, setup.dtype_name)
    print(f"device: {speed.card}: {speed.describe()}")
    hf = {}
    if not args.skip_hf:
        for name in names:
            pretrained = setup.engine_kwargs.get("load_format") != "dummy"
            hf[name] = run_isolated(
                hf_output_tok_s, str(setup.config_dir), setup.dtype_name, subsets[name], setup.vocab_limit, pretrained
            )
            print(f"HF generate, {name} subset {hf[name]['subset']}: {hf[name]['output_tok_s']:.1f} out tok/s")
    reporter = Reporter.from_args(args, setup.label, speed.card)
    shape = ModelShape.from_config_dir(setup.config_dir, 4 if setup.dtype_name == "float32" else 2)
    rows = []
    for variant, engine_kwargs in cli.variants(args, setup.engine_kwargs):
        cases = [EngineCase(name, reqs) for name, reqs in requests.items()]
        if not variant:  # HF's subsets only for the plain engine
            cases += [
                EngineCase(f"{name}-hf-subset", _subset_requests(subsets[name], setup.vocab_limit, args.seed))
                for name in hf
            ]
        run = run_isolated(run_engine_cases, engine_kwargs, cases)
        print(
            f"model: {setup.label}{f' ({variant})' if variant else ''}: {shape.describe()}; "
            f"KV pool {run.pool_tokens} tokens, batch <= {run.max_running_requests}"
        )
        for name, reqs in requests.items():
            hits = prefix_hits([r.prompt_ids for r in reqs])
            bound = workload_roofline(shape, speed, reqs, hits, run.max_running_requests, run.pool_tokens)
            phased = workload_roofline(shape, speed, reqs, hits, run.max_running_requests, run.pool_tokens, phases=True)
            summary = offline_summary(run.cases[name], bound, phased)
            prompt, output = workloads.total_tokens(reqs)
            extra = {"mean_input_len": round(prompt / len(reqs), 1), "mean_output_len": round(output / len(reqs), 1)}
            if name in hf and not variant:
                subset = offline_summary(run.cases[f"{name}-hf-subset"])
                extra.update(
                    hf_output_tok_s=hf[name]["output_tok_s"],
                    hf_subset=hf[name]["subset"],
                    engine_subset_output_tok_s=subset["output_tok_s"],
                    vs_hf=round(subset["output_tok_s"] / hf[name]["output_tok_s"], 2),
                )
            notes = f"variant {variant}" if variant else ""
            record = reporter.record(
                name, summary, notes, device_speed=speed.describe(), engine_args=engine_kwargs, **extra
            )
            rows.append({**record, "variant": variant or "-"})
    print(ASSUMPTIONS)
    print_table(
        rows,
        [
            ("workload", "workload"),
            ("variant", "variant"),
            ("num_requests", "requests"),
            ("output_tok_s", "out tok/s"),
            ("total_tok_s", "total tok/s"),
            ("ttft_p50_ms", "TTFT p50 ms"),
            ("ttft_p95_ms", "TTFT p95 ms"),
            ("itl_p50_ms", "ITL p50 ms"),
            ("tpot_p50_ms", "TPOT p50 ms"),
            ("roofline_output_tok_s", "roofline"),
            ("pct_of_roofline", "% roof"),
            ("pct_of_phase_sum", "% phase sum"),
            ("engine_subset_output_tok_s", "ours@subset"),
            ("hf_output_tok_s", "HF@subset"),
            ("vs_hf", "x HF"),
        ],
        title=f"offline throughput, {setup.label}, {speed.card}, commit {reporter.commit}",
    )


def _subset_requests(subset: HFSubset, vocab: int, seed: int) -> list[workloads.BenchRequest]:
    return workloads.fixed_random(subset.batch, subset.input_len, subset.output_len, vocab, seed + 7)


if __name__ == "__main__":
    main()
