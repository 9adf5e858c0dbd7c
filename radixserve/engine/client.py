"""The server side of the engine process: async submit / stream / abort over the pipe.

A reader thread receives the engine's batched outputs and hands them to the asyncio loop in one
``call_soon_threadsafe`` per message; each request has its own ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import threading
from collections.abc import AsyncIterator

from radixserve.config import ServerArgs
from radixserve.core.sampling_params import InvalidParamError
from radixserve.engine.output_processor import RequestOutput
from radixserve.engine.process import engine_main


class EngineDeadError(RuntimeError):
    pass


class EngineClient:
    """``observer``, when set, is told of every request: ``on_submit(request_id)``,
    ``on_output(output)`` for each output, ``forget(request_id, aborted)`` when it ends without a
    finished output (aborted by the consumer, or rejected)."""

    def __init__(self, args: ServerArgs, observer=None):
        self.args = args
        self.observer = observer
        self.info: dict | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._replies: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._send_lock = threading.Lock()
        self.fatal: str | None = None
        self._closing = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe(duplex=True)
        self._process = context.Process(target=engine_main, args=(self.args, child), daemon=True)
        self._process.start()
        child.close()
        self._ready = loop.create_future()
        threading.Thread(target=self._read, name="engine-reader", daemon=True).start()

    async def wait_ready(self) -> dict:
        return await self._ready

    @property
    def ready(self) -> bool:
        return self.info is not None and self.fatal is None

    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                self._loop.call_soon_threadsafe(self._dispatch, message)
        except (EOFError, OSError, TypeError):  # TypeError: the pipe was closed under a blocked recv()
            if not self._closing and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._dispatch, ("fatal", "the engine process exited"))
        except RuntimeError:
            pass  # the event loop closed during shutdown

    def _dispatch(self, message: tuple) -> None:
        kind = message[0]
        if kind == "outputs":
            for output in message[1]:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
        elif kind == "rejected":
            _, request_id, param, text = message
            queue = self._queues.get(request_id)
            if queue is not None:
                queue.put_nowait(InvalidParamError(text, param))
        elif kind == "reply":
            future = self._replies.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == "ready":
            self.info = message[1]
            if not self._ready.done():
                self._ready.set_result(self.info)
        elif kind == "fatal":
            self._fail(message[1])

    def _fail(self, text: str) -> None:
        self.fatal = self.fatal or text
        if not self._ready.done():
            self._ready.set_exception(EngineDeadError(text))
        for queue in self._queues.values():
            queue.put_nowait(EngineDeadError(text))
        for future in self._replies.values():
            if not future.done():
                future.set_exception(EngineDeadError(text))

    def _send(self, message: tuple) -> None:
        if self.fatal:
            raise EngineDeadError(self.fatal)
        with self._send_lock:
            self._conn.send(message)

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling: dict,
        extra_key: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs until it finishes. Leaving early (disconnect) aborts it.
        ``stream=False``: the text comes whole in the last output (``Request.stream_text``)."""
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        finished = rejected = False
        if self.observer is not None:
            self.observer.on_submit(request_id)
        try:
            self._send(("add", request_id, prompt_ids, sampling, extra_key, stream))
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    rejected = True
                    raise item
                finished = item.finished
                if finished and item.finish_reason.kind == "error" and item.finish_reason.param:
                    rejected = True  # e.g. a grammar that failed to compile: the request's own fault
                    raise InvalidParamError(item.finish_reason.message, item.finish_reason.param)
                if self.observer is not None:
                    self.observer.on_output(item)
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not (finished or rejected or self.fatal):
                self._send(("abort", request_id))  # the consumer left early: free its KV now
            if self.observer is not None and not finished:
                self.observer.forget(request_id, aborted=not rejected)

    async def call(self, method: str):
        token = next(self._tokens)
        future = self._loop.create_future()
        self._replies[token] = future
        self._send(("call", token, method))
        return await future

    def shutdown(self) -> None:
        self._closing = True
        try:
            self._conn.close()
        finally:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
