"""The offline engine, driven one ``step()`` at a time so every request's tokens are timestamped.

This is what ``Engine.generate`` does internally (add every request, step until all finish), with
a clock read after each step: a step's new tokens are one "chunk" in the latency_stats sense, and
all requests count as sent when the run starts (SGLang's offline mode, request rate = inf).

``run_engine_cases`` builds one engine in a child process (bench.harness.isolated), warms it up,
and runs several workloads on it, flushing the prefix cache before each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.harness.latency_stats import RequestTiming
from bench.harness.workloads import BenchRequest


@dataclass
class EngineCase:
    name: str
    requests: list[BenchRequest]
    repeats: int = 1  # > 1: run again (cache flushed each time), keep the fastest


@dataclass
class CaseResult:
    timings: list[RequestTiming]
    duration: float
    num_retractions: int
    num_tokens_computed: int


@dataclass
class EngineRunResult:
    pool_tokens: int
    max_running_requests: int
    cases: dict[str, CaseResult] = field(default_factory=dict)


def run_engine_cases(engine_kwargs: dict, cases: list[EngineCase], warmup_vocab: int = 1000) -> EngineRunResult:
    """Build ``Engine(**engine_kwargs)``, warm it up, run every case. Call it in a child process."""
    from radixserve import Engine

    engine = Engine(**engine_kwargs)
    core = engine.core
    result = EngineRunResult(core.cache.pool_size, engine.args.max_running_requests)
    warmup = [BenchRequest([(7 * i + j) % warmup_vocab for j in range(64)], 8) for i in range(8)]
    drive(core, warmup, "warmup")
    for case in cases:
        best = None
        for repeat in range(case.repeats):
            flush(engine)
            before = core.stats()
            start = time.perf_counter()
            timings = drive(core, case.requests, f"{case.name}-{repeat}")
            duration = time.perf_counter() - start
            after = core.stats()
            run = CaseResult(
                timings,
                duration,
                after["num_retractions"] - before["num_retractions"],
                after["num_tokens_computed"] - before["num_tokens_computed"],
            )
            if best is None or run.duration < best.duration:
                best = run
        result.cases[case.name] = best
    engine.shutdown()
    return result


def drive(core, requests: list[BenchRequest], tag: str) -> list[RequestTiming]:
    """Add every request to ``core`` (an EngineCore), step until all finish; one timing per request."""
    from radixserve.core.sampling_params import SamplingParams

    start = time.perf_counter()
    by_id: dict[str, RequestTiming] = {}
    timings = []
    for number, request in enumerate(requests):
        params = {"max_new_tokens": request.output_len, "temperature": 0.0, "ignore_eos": True}
        request_id = f"{tag}-{number}"
        # an offline user reads the text once it is whole (Engine.generate): no detokenizing per step
        core.add_request(request_id, request.prompt_ids, SamplingParams.from_dict(params), stream=False)
        timing = RequestTiming(request.prompt_len, start)
        by_id[request_id] = timing
        timings.append(timing)
    pending = len(requests)
    while pending:
        outputs = core.step()
        now = time.perf_counter()
        for output in outputs:
            timing = by_id.get(output.request_id)
            if timing is None:
                continue
            if output.new_token_ids:
                timing.add_chunk(now, len(output.new_token_ids))
            if output.finished:
                timing.finish_time = now
                timing.cached_tokens = output.cached_tokens
                if output.finish_reason.kind not in ("length", "stop"):
                    timing.error = str(output.finish_reason.to_dict())
                pending -= 1
    while core.has_work:  # with the overlap schedule a step may still be in flight
        core.step()
    return timings


def flush(engine) -> None:
    """Empty the prefix cache so the next run starts cold (the engine must be idle)."""
    if not engine.flush_cache():
        raise RuntimeError("the engine refused to flush its cache (work still in flight)")
