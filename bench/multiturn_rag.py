"""Multi-turn RAG through the real server, the radix cache on versus off (issue 6).

N documents of about D tokens (h100: 8 x 4,000; cpu: 2 x 384); per document 8-16 users
(cpu: 2-3) each ask 3-5 questions (cpu: 2-3) in turn. Every turn's prompt is a shared system
prompt + the document + the conversation so far (earlier questions and the answers the server
actually generated) + the new question; users arrive as a Poisson process and think between turns
(exponential, mean 2 s; cpu: 0.5 s). One aiohttp client per user, turns sequential, all users
concurrent, streaming ``/generate`` with token-id prompts. The same plan runs against a server
with the cache on and one started with --disable-radix-cache.

Reported per run: TTFT p50 / p95 / p99, end-to-end p50, throughput, hit rate = Σ cached / Σ prompt
tokens next to the maximum the conversation allows (tokens shared with a prompt sent, or a reply
finished, earlier), and the TTFT speedup. JSONL: bench/results/multiturn-rag.jsonl.

Mixed tenants: ``--background-rate R --background-requests N`` adds another tenant's traffic,
N random prompts of about ``--background-len`` tokens arriving at R/s, sharing nothing with the
conversations (reported apart: its TTFT, and whether the cache costs it anything). With
``--max-total-tokens`` below the working set the cache must hold up under eviction.

  python -m bench.multiturn_rag --preset h100
  python -m bench.multiturn_rag --preset cpu
  python -m bench.multiturn_rag --preset cpu --background-rate 2 --background-requests 24 --max-total-tokens 2500
"""

from __future__ import annotations

import asyncio
import time

from bench.harness import cli
from bench.harness.conversations import ConversationPlan, UserPlan, background_traffic, rag_plan
from bench.harness.http_client import new_session, stream_generate
from bench.harness.isolated import run_isolated
from bench.harness.latency_stats import RequestTiming, summarize
from bench.harness.prefix_index import max_hit_tokens_timed
from bench.harness.report import Reporter
from bench.harness.roofline import card_name
from bench.harness.server import running_server, warm_up
from bench.harness.table import print_table

PRESETS = {
    "cpu": {
        "num_docs": 2,
        "doc_len": 384,
        "users_per_doc": "2-3",
        "turns_per_user": "2-3",
        "system_len": 32,
        "question_len": 16,
        "output_len": 16,
        "user_rate": 2.0,
        "think_mean": 0.5,
    },
    "h100": {
        "num_docs": 8,
        "doc_len": 4000,
        "users_per_doc": "8-16",
        "turns_per_user": "3-5",
        "system_len": 256,
        "question_len": 64,
        "output_len": 128,
        "user_rate": 4.0,
        "think_mean": 2.0,
    },
}


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument("--num-docs", type=int, help="N (h100: 8)")
    parser.add_argument("--doc-len", type=int, help="D, tokens per document (h100: 4000)")
    parser.add_argument("--users-per-doc", help="range LO-HI (h100: 8-16)")
    parser.add_argument("--turns-per-user", help="range LO-HI (h100: 3-5)")
    parser.add_argument("--system-len", type=int)
    parser.add_argument("--question-len", type=int)
    parser.add_argument("--output-len", type=int)
    parser.add_argument("--user-rate", type=float, help="new users per second (Poisson)")
    parser.add_argument("--think-mean", type=float, help="mean think time between turns, seconds")
    parser.add_argument("--background-rate", type=float, default=0.0, help="other tenants' requests/s (default 0)")
    parser.add_argument("--background-requests", type=int, default=0, help="how many (default 0)")
    parser.add_argument("--background-len", type=int, help="their prompt tokens (default: the document length)")
    parser.add_argument("--caches", default="on,off", help="which runs: on, off or both")
    cli.add_engine_flags(parser)
    return parser


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


async def run_conversations(
    url: str, plan: ConversationPlan
) -> tuple[list[tuple[RequestTiming, list[int]]], list[RequestTiming]]:
    """Every user concurrently, each user's turns in sequence, and the background requests at
    their arrival times; returns (timing, prompt) per turn and the background timings."""
    done: list[tuple[RequestTiming, list[int]]] = []
    start = time.perf_counter()

    async def user_session(session, user: UserPlan) -> None:
        await asyncio.sleep(max(0.0, start + user.start - time.perf_counter()))
        history: list[int] = []
        for turn, question in enumerate(user.questions):
            prompt = plan.prompt(user, history, turn)
            timing = await stream_generate(session, url, prompt, plan.output_len, keep_ids=True)
            done.append((timing, prompt))
            if not timing.ok:
                return
            history += question + timing.output_ids
            await asyncio.sleep(user.think_times[turn])

    async def background(session, request) -> RequestTiming:
        await asyncio.sleep(max(0.0, start + request.start - time.perf_counter()))
        return await stream_generate(session, url, request.prompt, plan.output_len)

    async with new_session() as session:
        others = [background(session, request) for request in plan.background]
        results = await asyncio.gather(*(user_session(session, user) for user in plan.users), *others)
    return done, [timing for timing in results if timing is not None]


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    setup = cli.model_setup(args)
    plan = rag_plan(
        args.num_docs,
        args.doc_len,
        _range(args.users_per_doc),
        _range(args.turns_per_user),
        args.system_len,
        args.question_len,
        args.output_len,
        args.user_rate,
        args.think_mean,
        setup.vocab_limit,
        args.seed,
    )
    plan.background = background_traffic(
        args.background_rate,
        args.background_requests,
        args.background_len or args.doc_len,
        setup.vocab_limit,
        args.seed,
    )
    print(
        f"{len(plan.users)} users, {plan.num_turns} turns over {args.num_docs} documents"
        + (f"; {len(plan.background)} background requests at {args.background_rate:g}/s" if plan.background else "")
    )
    reporter = Reporter.from_args(args, setup.label, run_isolated(card_name))
    on_kwargs = {k: v for k, v in setup.engine_kwargs.items() if k != "disable_radix_cache"}
    summaries = {}
    for cache in [c.strip() for c in args.caches.split(",") if c.strip()]:
        kwargs = on_kwargs if cache == "on" else {**on_kwargs, "disable_radix_cache": True}
        with running_server(kwargs) as url:
            warm_up(url, setup.vocab_limit)
            summaries[cache] = _summary(*asyncio.run(run_conversations(url, plan)))
    if {"on", "off"} <= summaries.keys() and summaries["on"]["ttft_p50_ms"]:
        summaries["on"]["ttft_speedup"] = round(summaries["off"]["ttft_p50_ms"] / summaries["on"]["ttft_p50_ms"], 2)
    shape = (
        f"{args.num_docs} docs x ~{args.doc_len}, users {args.users_per_doc}, turns {args.turns_per_user}, "
        f"S {args.system_len}, Q {args.question_len}, O {args.output_len}, {args.user_rate:g} users/s, "
        f"think {args.think_mean:g} s"
        + (
            f"; background {len(plan.background)} x ~{args.background_len or args.doc_len} at {args.background_rate:g}/s"
            if plan.background
            else ""
        )
        + (f"; KV pool {args.max_total_tokens}" if args.max_total_tokens else "")
    )
    records = [
        reporter.record(
            "multiturn-rag",
            summary,
            ("cache on" if cache == "on" else "--disable-radix-cache") + summary.pop("failures"),
            cache=cache,
            shape=shape,
            engine_args=setup.engine_kwargs,
        )
        for cache, summary in summaries.items()
    ]
    print_table(
        records,
        [
            ("cache", "cache"),
            ("num_completed", "turns"),
            ("ttft_p50_ms", "TTFT p50 ms"),
            ("ttft_p95_ms", "TTFT p95 ms"),
            ("ttft_p99_ms", "TTFT p99 ms"),
            ("e2e_p50_ms", "e2e p50 ms"),
            ("output_tok_s", "out tok/s"),
            ("total_tok_s", "total tok/s"),
            ("hit_rate", "hit rate"),
            ("max_hit_rate", "max hit"),
            ("ttft_speedup", "TTFT p50 speedup"),
            ("background_completed", "bg done"),
            ("background_ttft_p50_ms", "bg TTFT p50 ms"),
        ],
        title=f"multi-turn RAG, {setup.label}, {reporter.card}, commit {reporter.commit}",
    )


def _summary(turns: list[tuple[RequestTiming, list[int]]], background: list[RequestTiming]) -> dict:
    """The conversations' figures; the background tenant's apart (``background_*``), if any."""
    timings = [t for t, _ in turns]
    summary = summarize(timings)
    finished = [(t.send_time, t.finish_time, p, t.output_ids) for t, p in turns if t.ok]
    prompt_tokens = sum(len(p) for _, _, p, _ in finished)
    summary["max_hit_rate"] = round(max_hit_tokens_timed(finished) / prompt_tokens, 4) if prompt_tokens else None
    failed = [t.error for t in timings + background if not t.ok]
    summary["failures"] = f"; {len(failed)} failed, first: {failed[0]}" if failed else ""
    if background:
        other = summarize(background)
        summary["background_completed"] = other["num_completed"]
        summary["background_ttft_p50_ms"] = other["ttft_p50_ms"]
        summary["background_ttft_p95_ms"] = other["ttft_p95_ms"]
        summary["background_hit_rate"] = other["hit_rate"]
    return summary


if __name__ == "__main__":
    main()
