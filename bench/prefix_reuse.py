"""Prefix reuse, offline (issue 6): the radix cache on versus off, and the scheduling policies
when the KV pool cannot hold every prefix at once.

Workloads (token-id prompts, ignore_eos, greedy, fixed seed):
  shared-prefix  SGLang's generated-shared-prefix shape: G groups x P prompts, an S-token system
                 prompt per group + a Q-token question, O output tokens, shuffled
                 (h100: 64 x 16, S 2048, Q 128, O 256; cpu: 8 x 8, 512, 32, 32).
  no-sharing     the control: as many random prompts of S + Q tokens, O output tokens.

Runs (--runs):
  on-off    both workloads with the cache on (fresh engine, default policy lpm) and with
            --disable-radix-cache (another fresh engine); same requests, same seed.
  on        the cache-on half alone (diagnosis: a batch log with --log-steps; no speedup).
  policies  shared-prefix with --max-total-tokens too small to hold every prefix at once
            (h100: 65536 tokens for 64 x 2048 prefix tokens), one engine per policy (lpm,
            dfs-weight, fcfs).
Reported: output and total tok/s, TTFT p50 / p95 (all requests sent at t = 0), hit rate =
Σ cached / Σ prompt tokens next to the workload's maximum (tokens shared with an earlier
request), speedup over the cache off next to the ideal speedup (the cache-off bound over the
cache-on bound: what two engines at their rooflines would show), and each run's share of its
roofline (a cache-off run's: the bound without a prefix cache). JSONL: bench/results/shared-prefix.jsonl,
no-sharing.jsonl, shared-prefix-constrained.jsonl.

  python -m bench.prefix_reuse --preset h100
  python -m bench.prefix_reuse --preset cpu
  python -m bench.prefix_reuse --runs policies --max-total-tokens-constrained 16384
"""

from __future__ import annotations

from bench.harness import cli, workloads
from bench.harness.engine_runs import EngineCase, run_engine_cases
from bench.harness.isolated import run_isolated
from bench.harness.prefix_index import prefix_hits
from bench.harness.report import Reporter, offline_summary
from bench.harness.roofline import ASSUMPTIONS, ModelShape, measure_device, workload_roofline
from bench.harness.table import print_table

PRESETS = {
    "cpu": {
        "num_groups": 8,
        "prompts_per_group": 8,
        "system_len": 512,
        "question_len": 32,
        "output_len": 32,
        "max_total_tokens_constrained": 1536,
    },
    "h100": {
        "num_groups": 64,
        "prompts_per_group": 16,
        "system_len": 2048,
        "question_len": 128,
        "output_len": 256,
        "max_total_tokens_constrained": 65536,  # half the 64 prefixes
    },
}
POLICIES = ("lpm", "dfs-weight", "fcfs")


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument("--runs", default="on-off,policies", help="comma-separated: on-off, on, policies")
    parser.add_argument("--workload", default="shared-prefix,no-sharing", help="for on-off: shared-prefix,no-sharing")
    parser.add_argument("--num-groups", type=int, help="G (h100: 64)")
    parser.add_argument("--prompts-per-group", type=int, help="P (h100: 16)")
    parser.add_argument("--system-len", type=int, help="S (h100: 2048)")
    parser.add_argument("--question-len", type=int, help="Q (h100: 128)")
    parser.add_argument("--output-len", type=int, help="O (h100: 256)")
    parser.add_argument("--no-sharing-requests", type=int, help="requests in no-sharing (default: G x P)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="for the policies run")
    parser.add_argument("--max-total-tokens-constrained", type=int, help="KV pool of the policies run (h100: 65536)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case, the fastest kept (cache flushed each)")
    cli.add_engine_flags(parser)
    cli.add_variant_flag(parser)
    return parser


def make_workloads(args, vocab: int) -> dict[str, list[workloads.BenchRequest]]:
    shared = workloads.shared_prefix(
        args.num_groups, args.prompts_per_group, args.system_len, args.question_len, args.output_len, vocab, args.seed
    )
    count = args.no_sharing_requests or len(shared)
    control = workloads.fixed_random(count, args.system_len + args.question_len, args.output_len, vocab, args.seed + 1)
    return {"shared-prefix": shared, "no-sharing": control}


class _Rows:
    """Turns an engine run of one workload into a record: roofline, hit rates, identity."""

    def __init__(self, args, setup, all_workloads, speed, shape, reporter):
        self.args, self.setup, self.workloads = args, setup, all_workloads
        self.speed, self.shape, self.reporter = speed, shape, reporter
        self.hits = {name: prefix_hits([r.prompt_ids for r in reqs]) for name, reqs in all_workloads.items()}

    def summary(self, name: str, run, cache: bool = True) -> dict:
        """``cache=False`` (a --disable-radix-cache run): the roofline is that of an engine without
        a prefix cache; ``ideal_speedup`` (cache-on runs): the ratio of the two bounds."""
        reqs = self.workloads[name]
        limits = (self.shape, self.speed, reqs, self.hits[name], run.max_running_requests, run.pool_tokens)
        bound = workload_roofline(*limits, cache)
        phased = workload_roofline(*limits, cache, phases=True)
        summary = offline_summary(run.cases[name], bound, phased)
        summary["max_hit_rate"] = round(sum(self.hits[name]) / sum(r.prompt_len for r in reqs), 4)
        summary["pool_tokens"] = run.pool_tokens
        if cache:
            no_cache = workload_roofline(*limits, False)
            summary["ideal_speedup"] = round(no_cache.seconds / bound.seconds, 2)
            no_cache_phased = workload_roofline(*limits, False, phases=True)
            summary["ideal_speedup_phase_sum"] = round(no_cache_phased.seconds / phased.seconds, 2)
        return summary

    def record(self, workload: str, summary: dict, notes: str, engine_args: dict | None = None, **extra) -> dict:
        engine_args = self.setup.engine_kwargs if engine_args is None else engine_args
        return self.reporter.record(workload, summary, notes, shape=_shape(self.args), engine_args=engine_args, **extra)


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    runs = {r.strip() for r in args.runs.split(",")}
    setup = cli.model_setup(args)
    all_workloads = make_workloads(args, setup.vocab_limit)
    speed = run_isolated(measure_device, setup.dtype_name)
    shape = ModelShape.from_config_dir(setup.config_dir, 4 if setup.dtype_name == "float32" else 2)
    print(f"device: {speed.card}: {speed.describe()}\nmodel: {setup.label}: {shape.describe()}\n{ASSUMPTIONS}")
    rows = _Rows(args, setup, all_workloads, speed, shape, Reporter.from_args(args, setup.label, speed.card))
    records = []
    names = [n.strip() for n in args.workload.split(",") if n.strip()]
    if "on-off" in runs or "on" in runs:
        records += _on_off(rows, names, with_off="on-off" in runs)
    if "policies" in runs:
        records += _policies(rows)
    print_table(
        records,
        [
            ("workload", "workload"),
            ("variant", "variant"),
            ("cache", "cache"),
            ("policy", "policy"),
            ("pool_tokens", "KV pool"),
            ("output_tok_s", "out tok/s"),
            ("total_tok_s", "total tok/s"),
            ("ttft_p50_ms", "TTFT p50 ms"),
            ("ttft_p95_ms", "TTFT p95 ms"),
            ("hit_rate", "hit rate"),
            ("max_hit_rate", "max hit"),
            ("speedup", "speedup"),
            ("ideal_speedup", "ideal"),
            ("ideal_speedup_phase_sum", "ideal (phase sum)"),
            ("pct_of_roofline", "% roof"),
            ("pct_of_phase_sum", "% phase sum"),
        ],
        title=f"prefix reuse ({_shape(args)}), {setup.label}, {speed.card}, commit {rows.reporter.commit}",
    )


def _on_off(rows: _Rows, names: list[str], with_off: bool = True) -> list[dict]:
    """Cache on and off for the plain engine, then for each ``--variant`` (both again: a variant
    that became the default would change the baseline too). ``with_off`` False: cache on only."""
    args = rows.args
    cases = [EngineCase(name, rows.workloads[name], args.repeats) for name in names]
    records = []
    for variant, engine_kwargs in cli.variants(args, rows.setup.engine_kwargs):
        on_kwargs = {k: v for k, v in engine_kwargs.items() if k != "disable_radix_cache"}
        on = run_isolated(run_engine_cases, on_kwargs, cases)
        policy = on_kwargs.get("schedule_policy", "lpm")
        suffix = f"; variant {variant}" if variant else ""
        common = {"policy": policy, "variant": variant or "-"}
        if not with_off:
            for name in names:
                summary = rows.summary(name, on)
                records.append(
                    rows.record(name, summary, "cache on, no off run" + suffix, on_kwargs, cache="on", **common)
                )
            continue
        off_kwargs = {**on_kwargs, "disable_radix_cache": True}
        off = run_isolated(run_engine_cases, off_kwargs, cases)
        for name in names:
            on_summary, off_summary = rows.summary(name, on), rows.summary(name, off, cache=False)
            speedup = round(on_summary["output_tok_s"] / off_summary["output_tok_s"], 2)
            records.append(
                rows.record(name, on_summary, "cache on" + suffix, on_kwargs, cache="on", speedup=speedup, **common)
            )
            records.append(
                rows.record(name, off_summary, "--disable-radix-cache" + suffix, off_kwargs, cache="off", **common)
            )
    return records


def _policies(rows: _Rows) -> list[dict]:
    args = rows.args
    base = {k: v for k, v in rows.setup.engine_kwargs.items() if k not in ("disable_radix_cache", "schedule_policy")}
    base["max_total_tokens"] = args.max_total_tokens_constrained
    case = [EngineCase("shared-prefix", rows.workloads["shared-prefix"], args.repeats)]
    notes = f"--max-total-tokens {args.max_total_tokens_constrained}; all prefixes: {args.num_groups * args.system_len} tokens"
    records = []
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        run = run_isolated(run_engine_cases, {**base, "schedule_policy": policy}, case)
        summary = rows.summary("shared-prefix", run)
        records.append(rows.record("shared-prefix-constrained", summary, notes, cache="on", policy=policy))
    return records


def _shape(args) -> str:
    return (
        f"{args.num_groups}x{args.prompts_per_group}, S {args.system_len}, Q {args.question_len}, O {args.output_len}"
    )


if __name__ == "__main__":
    main()
