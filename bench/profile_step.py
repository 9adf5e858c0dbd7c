"""Where a decode (or prefill) step's time goes: the engine's own steps under ``torch.profiler``.

One batch of ``--batch`` requests (prompts of ``--input-len`` tokens; with ``--groups G`` they
come in G groups sharing a ``--shared-len``-token prefix, as in the shared-prefix workload) is
prefilled, then ``--steps`` decode steps of the in-process engine are profiled. With ``--phase
prefill`` the prefill steps themselves are profiled instead (chunks of ``--chunked-prefill-size``
tokens, after the same prefill once unprofiled, without the overlap schedule or mixed chunks so
that no decode runs in them), from the first step to every request's first token. With ``--phase
mixed`` the steps that prefill ``--new-batch`` more prompts of ``--new-len`` tokens while the batch
decodes are profiled (the engine's mixed chunks, as in a busy server or workload (a)'s ramp-up),
from their arrival to their first tokens. Printed: the wall
time per step next to the time the device was busy (their gap is the device idling on the host),
and the device kernels grouped by name, most time first, in ms per step with their share; the
attention kernels, GEMMs and the rest summed apart. Without CUDA, the top host ops instead. No
record is written: this is a diagnostic.

  python -m bench.profile_step --batch 256 --input-len 1024
  python -m bench.profile_step --batch 1024 --groups 64 --shared-len 2048 --input-len 2176
  python -m bench.profile_step --preset cpu --batch 8 --input-len 64 --steps 4
  python -m bench.profile_step --batch 256 --trace /tmp/step.json   # also a Chrome trace
  python -m bench.profile_step --phase prefill --batch 40 --input-len 200   # one 8,000-token chunk
  python -m bench.profile_step --phase mixed --batch 900 --input-len 250 --new-batch 36 --new-len 200
"""

from __future__ import annotations

import time
from collections import defaultdict

from bench.harness import cli, workloads

PRESETS = {
    "cpu": {"batch": 8, "input_len": 64, "steps": 4},
    "h100": {"batch": 256, "input_len": 1024, "steps": 10},
}
ATTENTION_HINTS = ("attention", "decode", "prefill", "extend", "cascade", "shared_prefix", "flash", "merge")
GEMM_HINTS = ("gemm", "gemv", "cutlass", "sm90_xmma", "ampere_bf16", "cublas", "nvjet", "matmul")


def build_parser():
    parser = cli.build_parser(__doc__)
    parser.add_argument("--batch", type=int, help="requests decoding together (h100: 256)")
    parser.add_argument("--input-len", type=int, help="prompt tokens per request (h100: 1024)")
    parser.add_argument("--groups", type=int, default=0, help="prompts share a prefix within G groups")
    parser.add_argument("--shared-len", type=int, default=0, help="tokens of each group's shared prefix")
    parser.add_argument("--steps", type=int, help="decode steps profiled (h100: 10)")
    parser.add_argument(
        "--phase", choices=("decode", "prefill", "mixed"), default="decode", help="which steps to profile"
    )
    parser.add_argument("--new-batch", type=int, default=36, help="mixed: prompts arriving while the batch decodes")
    parser.add_argument("--new-len", type=int, default=200, help="mixed: tokens per arriving prompt")
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    parser.add_argument("--trace", help="write a Chrome trace of the profiled steps here")
    parser.add_argument(
        "--host-profile",
        type=int,
        default=0,
        metavar="N",
        help="also run steps under cProfile (prefill: one more prefill; decode: 10 decode steps before the"
        " profiled ones) and list the N Python functions with the most own time, then the most cumulative",
    )
    cli.add_engine_flags(parser)
    return parser


HOST_PROFILE_STEPS = 10  # decode steps under cProfile with --host-profile


def prompts(args, vocab: int) -> list[list[int]]:
    if not args.groups:
        return _random_prompts(args.batch, args.input_len, vocab, args.seed)
    import numpy as np

    rng = np.random.default_rng(args.seed)
    own_len = max(1, args.input_len - args.shared_len)
    shared = [workloads.random_ids(rng, args.shared_len, vocab) for _ in range(args.groups)]
    return [shared[i % args.groups] + workloads.random_ids(rng, own_len, vocab) for i in range(args.batch)]


def main(argv=None) -> None:
    args = cli.parse(build_parser(), PRESETS, argv)
    args.no_record = True
    setup = cli.model_setup(args)
    import torch
    from torch.profiler import ProfilerActivity

    from radixserve import Engine
    from radixserve.core.sampling_params import SamplingParams

    kwargs = dict(setup.engine_kwargs)
    if args.phase == "prefill":  # no decode in the profiled steps: none in flight, none mixed in
        kwargs.update(disable_overlap_schedule=True, disable_mixed_chunk=True)
    engine = Engine(**kwargs)
    core = engine.core
    params = SamplingParams.from_dict(
        {
            "max_new_tokens": args.steps + 64 + (HOST_PROFILE_STEPS if args.host_profile else 0),
            "temperature": 0.0,
            "ignore_eos": True,
        }
    )  # enough tokens to stay decoding through the profiled steps
    batch = prompts(args, setup.vocab_limit)
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    unprofiled = None
    if args.phase == "prefill":  # the same prefill unprofiled: kernels, plans, allocator at full size
        unprofiled = _unprofiled_prefill(engine, batch, cuda)
        if args.host_profile:
            _host_profile(engine, batch, args.host_profile)
    if args.phase == "prefill":  # one token each: no request decodes between the chunks
        params = SamplingParams.from_dict({"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True})
    for number, prompt in enumerate(batch):
        core.add_request(f"profile-{number}", prompt, params)
    if args.phase == "prefill":
        steps, wall, prof = _profiled(core, activities, cuda, lambda _, first: len(first) == len(batch))
    else:
        _until_first_tokens(core, len(batch))
        for _ in range(3):  # settle: graphs, allocator, the overlap pipeline
            core.step()
        if args.host_profile:
            _host_profile_decode(core, args.host_profile)
        if args.phase == "mixed":
            arriving = {f"profile-new-{n}" for n in range(args.new_batch)}
            new_prompts = _random_prompts(args.new_batch, args.new_len, setup.vocab_limit, args.seed + 1)
            for request_id, prompt in zip(sorted(arriving), new_prompts):
                core.add_request(request_id, prompt, params)
            steps, wall, prof = _profiled(core, activities, cuda, lambda _, first: arriving <= first)
        else:
            steps, wall, prof = _profiled(core, activities, cuda, lambda steps, _: steps == args.steps)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    engine.shutdown()
    report(prof, wall, steps, args, cuda, setup.label, sum(map(len, batch)))
    if unprofiled is not None:  # the profiler's own per-op cost inflates the wall time above
        print(f"without the profiler: wall {unprofiled * 1e3:.2f} ms/step (best of 3 warm runs)")


def _random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    return [r.prompt_ids for r in workloads.fixed_random(count, length, 1, vocab, seed)]


def _prefill_once(engine, batch, name: str) -> int:
    """Add ``batch`` with one output token each and step until done, then flush the cache; the
    number of steps (each waits for its results: no overlap in the prefill phase)."""
    from radixserve.core.sampling_params import SamplingParams

    one = SamplingParams.from_dict({"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True})
    for number, prompt in enumerate(batch):
        engine.core.add_request(f"{name}-{number}", prompt, one)
    steps = 0
    while engine.core.has_work:
        engine.core.step()
        steps += 1
    engine.flush_cache()
    return steps


def _unprofiled_prefill(engine, batch, cuda: bool, runs: int = 3) -> float:
    """Prefill ``batch`` ``runs`` times after one warm-up run; the best wall time per step, s."""
    import torch

    best = float("inf")
    for run in range(runs + 1):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        steps = _prefill_once(engine, batch, f"profile-warmup-{run}")
        if cuda:
            torch.cuda.synchronize()
        if run:
            best = min(best, (time.perf_counter() - started) / max(steps, 1))
    return best


def _host_profile(engine, batch, top: int) -> None:
    """Where the host's time goes in these (eager) steps: one more prefill under cProfile."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    steps = _prefill_once(engine, batch, "profile-host")
    profiler.disable()
    print(f"\nhost (cProfile) over {steps} prefill step(s), by own time, then by cumulative time:")
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def _host_profile_decode(core, top: int, steps: int = HOST_PROFILE_STEPS) -> None:
    """Where the host's time goes in decode steps: ``steps`` of them under cProfile (whose per-call
    cost inflates Python-heavy functions; compare the functions with each other)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        core.step()
    profiler.disable()
    wall_ms = (time.perf_counter() - started) * 1e3 / steps
    print(
        f"\nhost (cProfile) over {steps} decode steps ({wall_ms:.1f} ms a step under it), by own time, then cumulative:"
    )
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def _until_first_tokens(core, count: int) -> None:
    decoding: set[str] = set()
    while len(decoding) < count:  # prefill (chunked) until every request has its first token
        decoding.update(o.request_id for o in core.step() if o.new_token_ids)


def _profiled(core, activities, cuda: bool, done):
    """Profile ``core.step()`` until ``done(steps, first_tokens)`` (the ids of requests that have
    their first token) or the engine runs out of work. Returns (steps, wall s per step, the profiler)."""
    import torch
    from torch.profiler import profile

    if cuda:
        torch.cuda.synchronize()
    steps, first_tokens = 0, set()
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        while core.has_work and not done(steps, first_tokens):
            first_tokens.update(o.request_id for o in core.step() if o.new_token_ids)
            steps += 1
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - started) / max(steps, 1)
    return steps, wall, prof


def report(prof, wall: float, steps: int, args, cuda: bool, label: str, prompt_tokens: int) -> None:
    kernels: dict[str, float] = defaultdict(float)  # name -> device us over all profiled steps
    calls: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if cuda and event.device_type.name == "CUDA":
            kernels[event.name] += event.device_time_total
            calls[event.name] += 1
    device_total = sum(kernels.values())
    shape = f"{args.groups} groups sharing {args.shared_len} tokens" if args.groups else "no shared prefix"
    what = f"{steps} {args.phase} steps profiled"
    if args.phase == "prefill":
        what += f" ({prompt_tokens / steps:.0f} prompt tokens per step)"
    if args.phase == "mixed":
        what += f" ({args.new_batch} x {args.new_len} prompt tokens arriving)"
    print(f"\n{label}: batch {args.batch}, input {args.input_len}, {shape}; {what}")
    print(f"wall {wall * 1e3:.2f} ms/step; device busy {device_total / steps / 1e3:.2f} ms/step")
    if not cuda:
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
        for event in top:
            print(f"  {event.self_cpu_time_total / steps / 1e3:8.3f} ms  {event.key[:100]}")
        return
    sums = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    for name, us in kernels.items():
        lower = name.lower()
        kind = "attention" if any(h in lower for h in ATTENTION_HINTS) else "other"
        kind = "gemm" if kind == "other" and any(h in lower for h in GEMM_HINTS) else kind
        sums[kind] += us
    print("  ".join(f"{kind} {us / steps / 1e3:.2f} ms/step" for kind, us in sums.items()))
    print(f"\n{'ms/step':>8}  {'share':>6}  {'calls/step':>10}  kernel")
    for name, us in sorted(kernels.items(), key=lambda item: -item[1])[: args.top]:
        share = us / device_total if device_total else 0.0
        print(f"{us / steps / 1e3:8.3f}  {share:6.1%}  {calls[name] / steps:10.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
