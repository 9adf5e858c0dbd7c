"""The engine's host work per decode step, apart from the model: what the device waits for.

The device runs a step's kernels; everything else in a step is Python on one core: scheduling,
building the batch's indices, resolving sampled tokens (scheduler update, detokenizing, stop
checks). Whatever of it is not overlapped with the device adds to every step (and while the runner
still waits for the GPU at each step, none of it is). This bench runs the real engine on CPU with
a one-layer dummy Llama (``bench/models/tiny-llama``, so the model's own time is small), puts
``--batch-sizes`` requests into steady decode, and times ``--steps`` steps under cProfile: host ms per
step by phase, the model's forward and sampling excluded. Each batch size runs twice: with the objects alive after startup frozen out of the garbage collector and its
young threshold raised (the engine's default) and without either (the behaviour before them), one
engine each, so their difference is the collector's share.

  python -m bench.host_step                       # batches 100, 400, 800
  python -m bench.host_step --batch-sizes 1024 --steps 20
  python -m bench.host_step --batch-sizes 1024 --steps 20 --timers   # wall-clock phase timers
  python -m bench.host_step --batch-sizes 1024 --steps 20 --timers --whole-text   # as offline runs
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from pathlib import Path

from bench.harness import model_files, workloads
from bench.harness.isolated import run_isolated
from bench.harness.table import print_table

TINY_LLAMA = Path(__file__).resolve().parent / "models" / "tiny-llama"
PHASES = {  # (file suffix, function) -> column
    ("engine/engine_core.py", "step"): "step",
    ("scheduler/scheduler.py", "schedule"): "schedule",
    ("runner/model_runner.py", "build_batch"): "build",
    ("engine/engine_core.py", "_resolve"): "resolve",
    ("engine/engine_core.py", "_emit"): "detok",
    ("runner/model_runner.py", "forward"): "forward",
    ("runner/sampler.py", "sample_async"): "sample",
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    parser.add_argument("--batch-sizes", default="100,400,800", help="comma-separated (default 100,400,800)")
    parser.add_argument("--steps", type=int, default=30, help="decode steps profiled per run (default 30)")
    parser.add_argument("--input-len", type=int, default=200, help="prompt tokens per request (default 200)")
    parser.add_argument("--tokenizer-path", help="tokenizer directory (default: the embedded model's)")
    parser.add_argument(
        "--top", type=int, default=0, help="also list the N functions with the most own time (frozen runs)"
    )
    parser.add_argument(
        "--timers",
        action="store_true",
        help="time the phases with wall-clock timers around them instead of cProfile (whose per-call cost"
        " inflates Python-heavy phases)",
    )
    parser.add_argument(
        "--whole-text",
        action="store_true",
        help="requests that want their text whole at the end (offline, non-streaming: no detokenizing per"
        " step) instead of streamed deltas",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        metavar="N",
        help="set the collector's young threshold to N after the engine starts (the engine raises it to"
        " 20,000; 700 is Python's default), in both runs",
    )
    args = parser.parse_args(argv)
    tokenizer = args.tokenizer_path or str(model_files.default_tokenizer_dir())
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for frozen in (True, False):  # one engine (one child process) each
        top = args.top if frozen and not args.timers else 0
        measured = run_isolated(
            measure_all,
            tokenizer,
            sizes,
            args.steps,
            args.input_len,
            frozen,
            top,
            args.timers,
            not args.whole_text,
            args.gc_threshold,
        )
        for batch, times in measured:
            rows.append({"batch": batch, "gc": "frozen" if frozen else "collected", **times})
    rows.sort(key=lambda row: row["batch"])
    columns = [("batch", "batch"), ("gc", "startup objects")]
    columns += [(name, f"{name} ms") for name in ("host", "schedule", "build", "resolve", "detok", "step", "collector")]
    columns += [("young_gcs", "young gcs"), ("full_gcs", "full gcs"), ("full_gc", "full_gc ms")]
    how = "wall-clock timers" if args.timers else "cProfile"
    how += ", text whole at the end" if args.whole_text else ", text streamed"
    print_table(
        rows, columns, f"engine host ms per decode step (CPU, one-layer dummy Llama, {args.steps} steps, {how})"
    )
    print("host = step - forward - sample: what a step costs besides the model, on one core;")
    print(
        f"gc = the cyclic collector's time per step (inside the phases); young / full gcs = its collections over the {args.steps} steps;"
    )
    print("full_gc = one full garbage collection with the engine alive (after the runs)")


def measure_all(
    tokenizer: str,
    sizes: list[int],
    steps: int,
    input_len: int,
    frozen: bool,
    top: int = 0,
    timers: bool = False,
    stream_text: bool = True,
    gc_threshold: int | None = None,
) -> list:
    """In a child process: one engine; ``frozen=False`` skips its startup freeze (the behaviour
    before it), so the collector walks every startup object in its full collections."""
    from radixserve import Engine
    from radixserve.engine import engine_core

    if not frozen:
        engine_core._freeze_startup_objects = lambda: None
    context = input_len + 4 * steps + 64
    engine = Engine(
        model_path=str(TINY_LLAMA),
        tokenizer_path=tokenizer,
        load_format="dummy",
        dtype="float32",
        max_running_requests=max(sizes),
        chunked_prefill_size=8192,
        context_length=context,
        max_total_tokens=max(sizes) * context + 1,
    )
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold, *gc.get_threshold()[1:])
    results = [(batch, measure(engine, batch, steps, input_len, top, timers, stream_text)) for batch in sizes]
    started = time.perf_counter()
    gc.collect()  # one full collection with the engine alive: what each one costs the loop
    full_collection_ms = (time.perf_counter() - started) * 1e3
    engine.shutdown()
    return [(batch, {**times, "full_gc": full_collection_ms}) for batch, times in results]


def measure(
    engine, batch: int, steps: int, input_len: int, top: int = 0, timers: bool = False, stream_text: bool = True
) -> dict:
    from radixserve.core.sampling_params import SamplingParams

    core = engine.core
    params = SamplingParams.from_dict({"max_new_tokens": 3 * steps + 8, "temperature": 0.0, "ignore_eos": True})
    for number, request in enumerate(workloads.fixed_random(batch, input_len, 1, 40000, seed=batch)):
        core.add_request(f"host-{batch}-{number}", request.prompt_ids, params, stream=stream_text)
    decoding: set[str] = set()
    while len(decoding) < batch:
        decoding.update(o.request_id for o in core.step() if o.new_token_ids)
    for _ in range(3):
        core.step()
    from radixserve.engine.step_log import collector_seconds

    collector_before, collections_before = collector_seconds(), _collections()
    if timers:
        times = _timed(core, steps)
    else:
        times = _profiled(core, steps, batch, top)
    times["collector"] = (collector_seconds() - collector_before) * 1e3 / steps
    times["young_gcs"], _, times["full_gcs"] = (n - b for n, b in zip(_collections(), collections_before))
    while core.has_work:
        core.step()
    engine.flush_cache()
    times["host"] = times["step"] - times["forward"] - times["sample"]
    return times


def _collections() -> list[int]:
    """Collections run so far by the cyclic garbage collector, per generation (young, middle, full)."""
    return [generation["collections"] for generation in gc.get_stats()]


def _timed(core, steps: int) -> dict:
    """ms per step of each phase, from perf_counter around the phase's method (instance attributes,
    removed afterwards)."""
    phases = {  # column -> (object, method)
        "schedule": (core.scheduler, "schedule"),
        "build": (core.runner, "build_batch"),
        "forward": (core.runner, "forward"),
        "sample": (core.runner.sampler, "sample_async"),
        "resolve": (core, "_resolve"),
        "detok": (core, "_emit"),
    }
    spent = dict.fromkeys(phases, 0.0)

    def timed(column, method):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[column] += time.perf_counter() - started

        return call

    for column, (owner, name) in phases.items():
        setattr(owner, name, timed(column, getattr(owner, name)))
    try:
        started = time.perf_counter()
        for _ in range(steps):
            core.step()
        spent["step"] = time.perf_counter() - started
    finally:
        for owner, name in phases.values():
            delattr(owner, name)
    return {column: seconds * 1e3 / steps for column, seconds in spent.items()}


def _profiled(core, steps: int, batch: int, top: int) -> dict:
    """ms per step of each phase, cumulative times under cProfile."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(steps):
        core.step()
    profile.disable()
    times = {name: 0.0 for name in PHASES.values()}
    for (path, _, function), (_, _, _, cumulative, _) in pstats.Stats(profile).stats.items():
        for (suffix, name), column in PHASES.items():
            if function == name and path.endswith(suffix):
                times[column] += cumulative * 1e3 / steps
    if top:
        print(f"\nbatch {batch}: the {top} functions with the most own time over {steps} steps")
        pstats.Stats(profile).strip_dirs().sort_stats("tottime").print_stats(top)
    return times


if __name__ == "__main__":
    main()
