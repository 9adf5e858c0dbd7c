"""Per-request timings and their summary, with SGLang ``bench_serving``'s definitions:

- TTFT: first streamed chunk minus the moment the request was sent.
- ITL: the gaps between successive chunks of a request, pooled over all requests (a chunk is what
  one engine step produced for the request, normally one token).
- TPOT: per request, (end-to-end latency − TTFT) / (output tokens − 1); requests with one output
  token have none.
- Throughput: tokens / duration, the duration running from the first send to the last finish.

Percentiles are numpy's (linear interpolation); latencies are reported in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 95, 99)


@dataclass
class RequestTiming:
    prompt_len: int
    send_time: float  # time.perf_counter() when the request was sent / added
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    finish_time: float | None = None
    cached_tokens: int = 0
    output_ids: list[int] | None = None  # kept only where a bench needs them (multi-turn history)
    error: str | None = None

    def add_chunk(self, now: float, num_tokens: int) -> None:
        self.chunk_times.append(now)
        self.chunk_tokens.append(num_tokens)

    @property
    def output_len(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_time is not None and bool(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.send_time

    @property
    def e2e(self) -> float:
        return self.finish_time - self.send_time

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def tpot(self) -> float | None:
        if self.output_len <= 1:
            return None
        return (self.e2e - self.ttft) / (self.output_len - 1)


def percentiles_ms(values: list[float], prefix: str) -> dict[str, float | None]:
    """``{prefix_p50_ms: ..., prefix_p95_ms: ..., prefix_p99_ms: ...}`` from values in seconds."""
    if not values:
        return {f"{prefix}_p{p}_ms": None for p in PERCENTILES}
    points = np.percentile(np.asarray(values) * 1000.0, PERCENTILES)
    return {f"{prefix}_p{p}_ms": round(float(v), 3) for p, v in zip(PERCENTILES, points)}


def summarize(timings: list[RequestTiming], duration: float | None = None) -> dict:
    """The figures every record carries, from the requests that completed."""
    done = [t for t in timings if t.ok]
    if duration is None:
        duration = max(t.finish_time for t in done) - min(t.send_time for t in done) if done else 0.0
    prompt_tokens = sum(t.prompt_len for t in done)
    output_tokens = sum(t.output_len for t in done)
    cached_tokens = sum(t.cached_tokens for t in done)
    per_second = (lambda x: round(x / duration, 2)) if duration > 0 else (lambda x: None)
    summary = {
        "num_requests": len(timings),
        "num_completed": len(done),
        "duration_s": round(duration, 3),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": cached_tokens,
        "hit_rate": round(cached_tokens / prompt_tokens, 4) if prompt_tokens else None,
        "output_tok_s": per_second(output_tokens),
        "total_tok_s": per_second(prompt_tokens + output_tokens),
        "request_s": per_second(len(done)),
    }
    summary.update(percentiles_ms([t.ttft for t in done], "ttft"))
    summary.update(percentiles_ms([gap for t in done for gap in t.itls], "itl"))
    summary.update(percentiles_ms([t.tpot for t in done if t.tpot is not None], "tpot"))
    summary.update(percentiles_ms([t.e2e for t in done], "e2e"))
    return summary
