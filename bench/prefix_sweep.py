"""Throughput and hit rate against the share of the prompt that is common (issue 6).

Shared-prefix prompts of a fixed total length L (G groups x P prompts, O output tokens); the first
fraction f of every prompt is common to its group, the rest is the request's own. For each f, the
offline engine runs the workload with the cache on and with --disable-radix-cache (one engine
each, the cache flushed between fractions). Plotted (matplotlib, when installed) to a PNG:
output tok/s (on, off) and hit rate (measured, the workload's maximum) against f.
JSONL: bench/results/prefix-sweep.jsonl, one record per (f, cache).

  python -m bench.prefix_sweep --preset h100 --png docs/prefix_sweep_h100.png
  python -m bench.prefix_sweep --preset cpu  --png docs/prefix_sweep_cpu.png
  python -m bench.prefix_sweep --plot-from bench/results/prefix-sweep.jsonl --png docs/prefix_sweep_h100.png
"""

from __future__ import annotations

from pathlib import Path

from bench.harness import cli, workloads
from bench.harness.engine_runs import EngineCase, run_engine_cases
from bench.harness.isolated import run_isolated
from bench.harness.prefix_index import prefix_hits
from bench.harness.report import Reporter, offline_summary
from bench.harness.roofline import ModelShape, measure_device, workload_roofline
from bench.harness.table import print_table

PRESETS = {
    "cpu": {"num_groups": 4, "prompts_per_group": 4, "prompt_len": 256, "output_len": 8},
    "h100": {"num_groups": 16, "prompts_per_group": 16, "prompt_len": 2048, "output_len": 64},
}


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument("--fractions", default="0,0.25,0.5,0.75,0.95", help="shared fractions of the prompt")
    parser.add_argument("--num-groups", type=int, help="G (h100: 16)")
    parser.add_argument("--prompts-per-group", type=int, help="P (h100: 16)")
    parser.add_argument("--prompt-len", type=int, help="L, total prompt tokens (h100: 2048)")
    parser.add_argument("--output-len", type=int, help="O (h100: 64)")
    parser.add_argument("--png", type=Path, help="where to save the plot (default: docs/prefix_sweep_<preset>.png)")
    parser.add_argument(
        "--plot-from", type=Path, help="only plot the latest run recorded in this prefix-sweep.jsonl (no model needed)"
    )
    cli.add_engine_flags(parser)
    return parser


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    if args.plot_from:
        records = latest_sweep(args.plot_from)
        last = records[-1]
        png = args.png or Path(__file__).resolve().parents[1] / "docs" / f"prefix_sweep_{last['preset']}.png"
        print(plot(records, png, f"{last['model']}, {last['card']}: {last['shape']}"))
        return
    fractions = [float(f) for f in args.fractions.split(",")]
    setup = cli.model_setup(args)
    sweep = {
        f: workloads.shared_fraction(
            args.num_groups, args.prompts_per_group, args.prompt_len, f, args.output_len, setup.vocab_limit, args.seed
        )
        for f in fractions
    }
    speed = run_isolated(measure_device, setup.dtype_name)
    shape = ModelShape.from_config_dir(setup.config_dir, 4 if setup.dtype_name == "float32" else 2)
    cases = [EngineCase(f"f{f:g}", reqs) for f, reqs in sweep.items()]
    on_kwargs = {k: v for k, v in setup.engine_kwargs.items() if k != "disable_radix_cache"}
    runs = {
        "on": run_isolated(run_engine_cases, on_kwargs, cases),
        "off": run_isolated(run_engine_cases, {**on_kwargs, "disable_radix_cache": True}, cases),
    }
    reporter = Reporter.from_args(args, setup.label, speed.card)
    shape_text = f"{args.num_groups}x{args.prompts_per_group}, L {args.prompt_len}, O {args.output_len}"
    records = []
    for f, reqs in sweep.items():
        hits = prefix_hits([r.prompt_ids for r in reqs])
        max_hit = round(sum(hits) / sum(r.prompt_len for r in reqs), 4)
        for cache, run in runs.items():
            bound = workload_roofline(shape, speed, reqs, hits, run.max_running_requests, run.pool_tokens)
            summary = offline_summary(run.cases[f"f{f:g}"], bound)
            records.append(
                reporter.record(
                    "prefix-sweep",
                    summary,
                    f"shared fraction {f:g} of a {args.prompt_len}-token prompt",
                    shared_fraction=f,
                    cache=cache,
                    max_hit_rate=max_hit,
                    shape=shape_text,
                    engine_args=setup.engine_kwargs,
                )
            )
    png = args.png or Path(__file__).resolve().parents[1] / "docs" / f"prefix_sweep_{args.preset}.png"
    title = f"{setup.label}, {speed.card}: {shape_text}"
    print(plot(records, png, title))
    print_table(
        records,
        [
            ("shared_fraction", "shared"),
            ("cache", "cache"),
            ("output_tok_s", "out tok/s"),
            ("total_tok_s", "total tok/s"),
            ("ttft_p50_ms", "TTFT p50 ms"),
            ("hit_rate", "hit rate"),
            ("max_hit_rate", "max hit"),
            ("pct_of_roofline", "% roof"),
        ],
        title=f"prefix sweep ({shape_text}), {setup.label}, {speed.card}, commit {reporter.commit}",
    )


def latest_sweep(path: Path) -> list[dict]:
    """The records of the last run in a prefix-sweep.jsonl: same commit and card as the last line,
    the latest per (fraction, cache), in fraction order."""
    import json

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = records[-1]
    latest = {}
    for record in records:
        if (record["commit"], record["card"], record["shape"]) == (last["commit"], last["card"], last["shape"]):
            latest[(record["shared_fraction"], record["cache"])] = record
    return [latest[key] for key in sorted(latest)]


def plot(records: list[dict], png: Path, title: str) -> str:
    """Two panels: output tok/s (cache on / off) and hit rate (measured / maximum) against f."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    on = [r for r in records if r["cache"] == "on"]
    off = [r for r in records if r["cache"] == "off"]
    xs = [100 * r["shared_fraction"] for r in on]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["output_tok_s"] for r in on], "o-", label="radix cache on")
    left.plot(xs, [r["output_tok_s"] for r in off], "s--", label="cache off")
    left.set(xlabel="shared part of the prompt (%)", ylabel="output tok/s", title="throughput")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(xs, [100 * r["hit_rate"] for r in on], "o-", label="measured (cache on)")
    right.plot(xs, [100 * r["max_hit_rate"] for r in on], "k:", label="workload maximum")
    right.set(xlabel="shared part of the prompt (%)", ylabel="prefix-cache hit rate (%)", title="hit rate")
    right.set_ylim(0, 100)
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return f"plot: {png}"


if __name__ == "__main__":
    main()
