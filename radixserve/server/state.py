"""Per-app server state (engine client, tokenizer, names) and request-body parsing."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from aiohttp import web

from radixserve.config import ServerArgs
from radixserve.engine.client import EngineClient
from radixserve.server.errors import APIError, bad_request
from radixserve.server.metrics import Metrics
from radixserve.tokenizer.tokenizer import Tokenizer


class ServerState:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.metrics = Metrics()
        self.client = EngineClient(args, observer=self.metrics)
        self.tokenizer: Tokenizer | None = None
        self.model_name = args.served_model_name or _default_model_name(args.model_path)
        self.created = int(time.time())
        self.context_length: int | None = None
        self.token_limit = 0  # prompt + output tokens one request may hold: min(context, KV pool)
        self.generation_defaults: dict = {}

    @property
    def ready(self) -> bool:
        return self.client.ready and self.tokenizer is not None


STATE = web.AppKey("state", ServerState)


def _default_model_name(model_path: str | None) -> str:
    return Path(model_path).name if model_path else "SmolLM2-135M-Instruct"


async def read_json(request: web.Request) -> dict:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON body: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("the JSON body must be an object")
    return body


def check_model(state: ServerState, body: dict) -> None:
    """404 ``model_not_found`` when the body names a model this server does not serve."""
    model = body.get("model")
    if model is not None and model != state.model_name:
        raise APIError(
            404,
            f"the model '{model}' does not exist (this server serves '{state.model_name}')",
            "model",
            "model_not_found",
        )
