"""Server-sent events: ``data: {json}\\n\\n`` frames, then ``data: [DONE]``."""

from __future__ import annotations

import orjson
from aiohttp import web


class SSEWriter:
    def __init__(self, request: web.Request):
        self.request = request
        self.response: web.StreamResponse | None = None

    async def _start(self) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(self.request)
        self.response = response
        return response

    async def send(self, payload: dict) -> None:
        response = self.response or await self._start()
        await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")

    async def done(self) -> web.StreamResponse:
        response = self.response or await self._start()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
