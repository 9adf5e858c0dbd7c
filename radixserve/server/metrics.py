"""Prometheus metrics in the text exposition format (no client library needed).

Per-request figures (tokens, latencies, finish reasons) are recorded in the server as outputs
arrive from the engine; gauges (running, queued, KV usage) are read from the engine at scrape
time. Prefix-cache hit rate over any window is
``rate(radixserve:prefix_cache_hit_tokens_total) / rate(radixserve:prefix_cache_query_tokens_total)``.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from radixserve.engine.output_processor import RequestOutput

PREFIX = "radixserve:"
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self):
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def render(self) -> list[str]:
        name = PREFIX + self.name
        lines = [f"# HELP {name} {self.help}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total}", f"{name}_count {self.count}"]
        return lines


@dataclass
class _Timing:
    start: float
    last: float | None = None


class Metrics:
    def __init__(self):
        self.counters: dict[str, float] = {
            "prompt_tokens_total": 0,
            "generation_tokens_total": 0,
            "prefix_cache_query_tokens_total": 0,
            "prefix_cache_hit_tokens_total": 0,
        }
        self.finished: dict[str, int] = {}
        self.ttft = Histogram("time_to_first_token_seconds", "Time to first token.")
        self.itl = Histogram("inter_token_latency_seconds", "Time between consecutive output tokens.")
        self.e2e = Histogram("e2e_request_latency_seconds", "End-to-end request latency.")
        self._timings: dict[str, _Timing] = {}

    def on_submit(self, request_id: str) -> None:
        self._timings[request_id] = _Timing(time.perf_counter())

    def on_output(self, output: RequestOutput) -> None:
        timing = self._timings.get(output.request_id)
        if timing is None:
            return
        now = time.perf_counter()
        num_new = len(output.new_token_ids)
        if num_new:
            if timing.last is None:
                self.ttft.observe(now - timing.start)
            else:
                for _ in range(num_new):
                    self.itl.observe((now - timing.last) / num_new)
            timing.last = now
        self.counters["generation_tokens_total"] += num_new
        if output.finished:
            self._on_finish(output, now - timing.start)
            del self._timings[output.request_id]

    def _on_finish(self, output: RequestOutput, latency: float) -> None:
        self.e2e.observe(latency)
        self.counters["prompt_tokens_total"] += output.prompt_tokens
        self.counters["prefix_cache_query_tokens_total"] += output.prompt_tokens
        self.counters["prefix_cache_hit_tokens_total"] += output.cached_tokens
        reason = output.finish_reason.kind
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def forget(self, request_id: str, aborted: bool) -> None:
        """A request that ended without a finished output: aborted (client left) or rejected."""
        self._timings.pop(request_id, None)
        if aborted:
            self.finished["abort"] = self.finished.get("abort", 0) + 1

    def render(self, stats: dict | None) -> str:
        lines: list[str] = []
        for name, value in self.counters.items():
            lines += [f"# TYPE {PREFIX}{name} counter", f"{PREFIX}{name} {value}"]
        lines.append(f"# TYPE {PREFIX}request_success_total counter")
        for reason, count in sorted(self.finished.items()):
            lines.append(f'{PREFIX}request_success_total{{finish_reason="{reason}"}} {count}')
        if stats is not None:
            lines += _gauges(stats)
        for histogram in (self.ttft, self.itl, self.e2e):
            lines += histogram.render()
        return "\n".join(lines) + "\n"


def _gauges(stats: dict) -> list[str]:
    kv = stats["kv"]
    used = kv["protected"]
    values = {
        "num_requests_running": stats["num_running"],
        "num_requests_waiting": stats["num_waiting"],
        "kv_cache_usage_perc": used / kv["pool_size"] if kv["pool_size"] else 0.0,
        "kv_cache_evictable_tokens": kv["evictable"],
        "kv_cache_free_tokens": kv["free"],
    }
    lines = []
    for name, value in values.items():
        lines += [f"# TYPE {PREFIX}{name} gauge", f"{PREFIX}{name} {value}"]
    lines += [f"# TYPE {PREFIX}retractions_total counter", f"{PREFIX}retractions_total {stats['num_retractions']}"]
    return lines
