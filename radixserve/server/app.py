"""The aiohttp application: routes, auth, error mapping, startup of the engine process."""

from __future__ import annotations

import asyncio
import hmac
import logging
from pathlib import Path

from aiohttp import web

from radixserve.config import ServerArgs
from radixserve.server import handlers
from radixserve.server.errors import APIError
from radixserve.server.native import add_native_routes
from radixserve.server.openapi import add_openapi_route
from radixserve.server.state import STATE, ServerState
from radixserve.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 32 * 1024 * 1024


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except APIError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status == 413:
            return APIError(413, f"request body larger than {MAX_BODY_BYTES} bytes").response()
        if exc.status in (404, 405):
            return APIError(
                exc.status, f"{request.method} {request.path} is not an endpoint", code="not_found"
            ).response()
        raise
    except Exception:
        logger.exception("unhandled error on %s", request.path)
        return APIError(500, "internal server error").response()


@web.middleware
async def auth_middleware(request: web.Request, handler):
    key = request.app[STATE].args.api_key
    if key and request.path != "/health":
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")
    return await handler(request)


def build_app(args: ServerArgs) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, auth_middleware])
    app[STATE] = ServerState(args)
    app.on_startup.append(_start_engine)
    app.on_shutdown.append(_stop_engine)
    handlers.add_routes(app)
    add_native_routes(app)
    add_openapi_route(app)
    return app


async def _start_engine(app: web.Application) -> None:
    state = app[STATE]
    state.client.start(asyncio.get_running_loop())
    app["engine_wait"] = asyncio.create_task(_await_engine(state))


async def _await_engine(state: ServerState) -> None:
    info = await state.client.wait_ready()
    tokenizer_path = state.args.tokenizer_path or info["model_path"]
    path = Path(tokenizer_path)
    state.tokenizer = Tokenizer.from_path(
        path if path.is_dir() else path.parent, chat_template=state.args.chat_template
    )
    state.context_length = info["context_length"]
    state.token_limit = min(info["context_length"], info["max_total_tokens"])
    state.generation_defaults = info["generation_defaults"]
    logger.info(
        "ready: %s on %s (%s), KV pool %d tokens",
        state.model_name,
        info["device"],
        info["dtype"],
        info["max_total_tokens"],
    )


async def _stop_engine(app: web.Application) -> None:
    app[STATE].client.shutdown()


def run_server(args: ServerArgs) -> None:
    # handler_cancellation: a client that disconnects cancels its handler, which aborts its
    # requests in the engine (EngineClient.generate's cleanup) and frees their KV slots.
    web.run_app(
        build_app(args), host=args.host, port=args.port, print=lambda msg: logger.info(msg), handler_cancellation=True
    )
