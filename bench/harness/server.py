"""The real server for the serving benches, via radixserve.server.launch (as the tests use it)."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

from bench.harness.cli import server_flags
from bench.harness.http_client import new_session, post, stream_generate
from bench.harness.isolated import server_dump_delay


@contextmanager
def running_server(engine_kwargs: dict, *extra_flags: str, timeout: float = 900):
    """Start ``radixserve serve`` with the bench's engine flags; yield its base URL; stop it. With
    ``--stack-dump-after`` the server and its engine print their stacks when the bench does."""
    from radixserve.server.launch import dump_stacks, start_server, stop_server, wait_healthy

    process, url = start_server(*server_flags(engine_kwargs), "--log-level", "warning", *extra_flags)
    dump = None
    try:
        wait_healthy(url, process, timeout=timeout)
        delay = server_dump_delay()
        if delay is not None:
            dump = threading.Timer(delay, dump_stacks, [process])
            dump.daemon = True
            dump.start()
        yield url
    finally:
        if dump is not None:
            dump.cancel()
        stop_server(process)


def warm_up(url: str, vocab_limit: int, num_requests: int = 4) -> None:
    """A few short streamed requests (first-call compilation, allocator growth), then a cache flush."""

    async def go():
        async with new_session() as session:
            prompts = [[(13 * i + j) % vocab_limit for j in range(64)] for i in range(num_requests)]
            await asyncio.gather(*(stream_generate(session, url, p, 8) for p in prompts))

    asyncio.run(go())
    post(url, "/flush_cache")
