"""Streaming requests to the real server's native ``/generate`` (token-id prompts), over aiohttp.

Each ``data:`` chunk of the stream carries the sample's output ids so far (SGLang's default,
non-incremental streaming); a chunk that adds ids is one chunk in the latency_stats sense, timed
when it arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import numpy as np
import orjson

from bench.harness.latency_stats import RequestTiming
from bench.harness.workloads import BenchRequest


def new_session() -> aiohttp.ClientSession:
    """A session without a connection cap or a total timeout (long streams at high concurrency)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_read=600)
    )


async def stream_generate(
    session: aiohttp.ClientSession, url: str, prompt_ids: list[int], output_len: int, keep_ids: bool = False
) -> RequestTiming:
    """POST one streaming /generate; never raises (a failure is recorded in ``timing.error``)."""
    body = {
        "input_ids": prompt_ids,
        "sampling_params": {"max_new_tokens": output_len, "temperature": 0.0, "ignore_eos": True},
        "stream": True,
    }
    timing = RequestTiming(len(prompt_ids), time.perf_counter())
    try:
        async with session.post(url + "/generate", data=orjson.dumps(body), headers=_JSON) as response:
            if response.status != 200:
                timing.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return timing
            await _read_stream(response, timing, keep_ids)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
    return timing


_JSON = {"Content-Type": "application/json"}


async def _read_stream(response: aiohttp.ClientResponse, timing: RequestTiming, keep_ids: bool) -> None:
    seen = 0
    buffer = b""
    async for data in response.content.iter_any():
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        now = time.perf_counter()
        for event in events:
            payload = event.strip().removeprefix(b"data:").strip()
            if not payload or payload == b"[DONE]":
                continue
            chunk = orjson.loads(payload)
            if "error" in chunk:
                timing.error = str(chunk["error"])
                return
            ids = chunk["output_ids"]
            if len(ids) > seen:
                timing.add_chunk(now, len(ids) - seen)
                seen = len(ids)
            meta = chunk["meta_info"]
            if meta.get("finish_reason") is not None:
                timing.finish_time = now
                timing.cached_tokens = meta.get("cached_tokens", 0)
                if keep_ids:
                    timing.output_ids = list(ids)


async def poisson_run(url: str, requests: list[BenchRequest], rate: float, seed: int) -> list[RequestTiming]:
    """Send ``requests`` in order with exponential gaps of mean 1/rate (rate = inf: all at once),
    the first at once, as SGLang's bench_serving does; wait for all."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, len(requests)) if np.isfinite(rate) else np.zeros(len(requests))
    async with new_session() as session:
        tasks = []
        start, due = time.perf_counter(), 0.0
        for request, gap in zip(requests, gaps):
            tasks.append(asyncio.create_task(stream_generate(session, url, request.prompt_ids, request.output_len)))
            due += float(gap)  # sleep to the schedule, not by the gap: sends never drift late
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        return list(await asyncio.gather(*tasks))


def post(url: str, path: str) -> dict:
    request = urllib.request.Request(url + path, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=60) as response:
        return json.loads(response.read())
