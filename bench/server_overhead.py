"""What the HTTP server and the engine-process IPC cost on top of the in-process engine.

Runs the same 32 greedy chat requests (64 new tokens each, ignore_eos) three ways:
the offline ``Engine`` in-process, and the real server driven by the official ``openai`` async
client, non-streaming and streaming. Also times one engine->server message of a step's outputs
through the pipe (pickle + send + receive) for batch sizes 1..256.

    .venv/bin/python bench/server_overhead.py
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
import urllib.request

from radixserve import Engine
from radixserve.core.request import FinishReason
from radixserve.engine.output_processor import RequestOutput
from radixserve.server.launch import start_server, stop_server, wait_healthy

NUM_REQUESTS, NEW_TOKENS = 32, 64
QUESTION = "Describe a quiet morning in a small fishing village. (variant {i})"


def run_offline() -> float:
    engine = Engine(max_total_tokens=16384)
    prompts = [
        engine.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION.format(i=i)}])
        for i in range(NUM_REQUESTS)
    ]
    params = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    engine.generate(prompts[:2], {"max_new_tokens": 2})
    engine.flush_cache()
    start = time.perf_counter()
    engine.generate(prompts, params)
    return time.perf_counter() - start


async def _drive(url: str, stream: bool) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=600)

    async def one(i: int) -> None:
        kwargs = dict(
            model="SmolLM2-135M-Instruct",
            max_tokens=NEW_TOKENS,
            temperature=0,
            messages=[{"role": "user", "content": QUESTION.format(i=i)}],
            extra_body={"ignore_eos": True},
        )
        if stream:
            async for _ in await client.chat.completions.create(stream=True, **kwargs):
                pass
        else:
            await client.chat.completions.create(**kwargs)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(NUM_REQUESTS)))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def run_server() -> tuple[float, float]:
    process, url = start_server("--max-total-tokens", "16384", "--log-level", "warning")
    try:
        wait_healthy(url, process)
        asyncio.run(_drive(url, stream=False))  # warm-up
        results = []
        for stream in (False, True):
            urllib.request.urlopen(urllib.request.Request(url + "/flush_cache", method="POST"))
            results.append(asyncio.run(_drive(url, stream)))
        return results[0], results[1]
    finally:
        stop_server(process)


def _echo(conn) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(message)


def pipe_cost(batch: int, repeats: int = 200) -> float:
    """Seconds for one step's outputs to cross the pipe (measured as half a round trip)."""
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_echo, args=(child,))
    process.start()
    outputs = [RequestOutput(f"req-{i}", [1234], " word", [-0.5], [None], None, 300, 200, 17) for i in range(batch)]
    outputs[0].finish_reason = FinishReason("length")
    parent.send(("outputs", outputs))
    parent.recv()
    start = time.perf_counter()
    for _ in range(repeats):
        parent.send(("outputs", outputs))
        parent.recv()
    elapsed = (time.perf_counter() - start) / repeats / 2
    parent.send(None)
    process.join()
    return elapsed


def main() -> None:
    print("one step's outputs through the engine pipe (pickle + send + receive):")
    for batch in (1, 32, 256):
        print(f"  batch {batch:4d}: {pipe_cost(batch) * 1e6:8.1f} us per step")
    offline = run_offline()
    served, streamed = run_server()
    tokens = NUM_REQUESTS * NEW_TOKENS
    print(f"\n{NUM_REQUESTS} chat requests x {NEW_TOKENS} tokens, greedy, embedded model, CPU")
    print(f"{'path':34} {'seconds':>8} {'out tok/s':>10} {'overhead':>9}")
    for name, seconds in (
        ("offline Engine (in-process)", offline),
        ("server, openai client", served),
        ("server, openai client, streaming", streamed),
    ):
        print(f"{name:34} {seconds:8.2f} {tokens / seconds:10.1f} {100 * (seconds / offline - 1):8.1f}%")


if __name__ == "__main__":
    main()
