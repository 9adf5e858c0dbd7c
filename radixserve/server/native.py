"""SGLang's native ``/generate`` and vLLM-style ``/v1/tokenize`` / ``/v1/detokenize``.

``/generate`` answers one prompt with an object, a batch (or ``n > 1``) with a list in sample
order (prompt-major). Streamed, it sends ``data: {...}`` after every engine step a sample advanced
in, each chunk carrying that sample's text and ids so far (SGLang's default, non-incremental
streaming) plus ``"index"`` for batches, then ``data: [DONE]``. Errors found before the first chunk
are OpenAI-shaped 400s; an error after it arrives as a ``data: {"error": ...}`` chunk, as in SGLang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson
from aiohttp import web

from radixserve.core.sampling_params import InvalidParamError
from radixserve.engine.client import EngineDeadError
from radixserve.engine.output_processor import RequestOutput
from radixserve.server.errors import APIError, bad_request
from radixserve.server.native_output import SampleOutput
from radixserve.server.native_request import GenerateRequest, Sample, parse_generate
from radixserve.server.protocol import chat_messages
from radixserve.server.sse import SSEWriter
from radixserve.server.state import STATE, ServerState, read_json


def add_native_routes(app: web.Application) -> None:
    """Register /generate (POST and PUT, as SGLang) and the tokenizer endpoints (with vLLM's
    unversioned aliases /tokenize and /detokenize)."""
    app.router.add_post("/generate", generate)
    app.router.add_put("/generate", generate)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/tokenize", tokenize)
        app.router.add_post(f"{prefix}/detokenize", detokenize)


def _ready_state(request: web.Request) -> ServerState:
    state = request.app[STATE]
    if not state.ready:
        raise APIError(503, state.client.fatal or "the model is still loading", code="model_loading")
    return state


def _json(body) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# ---- /generate ------------------------------------------------------------------------------


async def generate(request: web.Request) -> web.StreamResponse:
    """SGLang's GenerateReqInput in, its output dict(s) out."""
    arrived = time.perf_counter()
    state = _ready_state(request)
    body = await read_json(request)
    parsed = parse_generate(body, state.tokenizer, state.client.info["vocab_size"], state.generation_defaults)
    outputs = [SampleOutput(s, state.tokenizer, parsed.return_text_in_logprobs, arrived) for s in parsed.samples]
    if parsed.stream:
        return await _stream_generate(request, state, parsed, outputs)
    samples = run_samples(state.client, parsed.samples, parsed.prompt_param, stream=False)
    async with aclosing(samples) as stream:
        async for index, output in stream:
            outputs[index].add(output)
    bodies = [o.to_dict() for o in outputs]
    return _json(bodies[0] if parsed.single else bodies)


async def _stream_generate(
    request: web.Request, state: ServerState, parsed: GenerateRequest, outputs: list[SampleOutput]
) -> web.StreamResponse:
    writer = SSEWriter(request)
    try:
        async with aclosing(run_samples(state.client, parsed.samples, parsed.prompt_param)) as stream:
            async for index, output in stream:
                outputs[index].add(output)
                chunk = outputs[index].to_dict()
                if not parsed.single:
                    chunk["index"] = index
                await writer.send(chunk)
    except APIError as exc:
        if writer.response is None:
            raise  # nothing sent yet: a plain JSON error response
        await writer.send(
            {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}
        )
    return await writer.done()


async def run_samples(
    client, samples: list[Sample], prompt_param: str, stream: bool = True
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run every sample concurrently; yield ``(sample index, output)`` as outputs arrive
    (``stream=False``: each sample's text whole in its last output).

    Ends when every sample has finished. A rejected sample raises APIError (400 naming the
    parameter; ``prompt_param`` for the prompt) and, like leaving early, aborts the others.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(sample: Sample) -> None:
        try:
            async for output in client.generate(sample.request_id, sample.prompt_ids, sample.sampling, stream=stream):
                await queue.put((sample.index, output))
        except Exception as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(s)) for s in samples]
    remaining = len(samples)
    try:
        while remaining:
            item = await queue.get()
            if isinstance(item, Exception):
                raise _api_error(item, prompt_param) from item
            remaining -= item[1].finished
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _api_error(exc: Exception, prompt_param: str) -> Exception:
    if isinstance(exc, InvalidParamError):
        return bad_request(str(exc), prompt_param if exc.param in ("prompt", "input_ids") else exc.param)
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"the engine is not running: {exc}", code="engine_dead")
    return exc


# ---- tokenizer endpoints --------------------------------------------------------------------

_TOKENIZE_FIELDS = frozenset({"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"})


async def tokenize(request: web.Request) -> web.Response:
    """``{"prompt": str}`` or ``{"messages": [...]}`` -> ``{"tokens", "count", "max_model_len"}``.

    Messages become exactly the prompt ids /v1/chat/completions would run (chat template, BOS only
    where the template lacks it); ``add_generation_prompt`` defaults to true. ``add_special_tokens``
    (default true) applies to ``prompt`` only.
    """
    state = _ready_state(request)
    body = await read_json(request)
    _check_fields(state, body, _TOKENIZE_FIELDS)
    if ("prompt" in body) == ("messages" in body):
        raise bad_request("pass exactly one of prompt or messages", "prompt")
    if "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise bad_request("prompt must be a string", "prompt")
        tokens = state.tokenizer.encode(body["prompt"], add_special_tokens=_bool(body, "add_special_tokens", True))
    else:
        if "add_special_tokens" in body:
            raise bad_request("add_special_tokens applies to prompt, not messages", "add_special_tokens")
        messages = chat_messages(body)
        try:
            tokens = state.tokenizer.encode_chat(messages, _bool(body, "add_generation_prompt", True))
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from exc
    return _json({"tokens": tokens, "count": len(tokens), "max_model_len": state.context_length})


async def detokenize(request: web.Request) -> web.Response:
    """``{"tokens": [ids]}`` -> ``{"prompt": text}``, special tokens kept. Ids outside the vocabulary are a 400."""
    state = _ready_state(request)
    body = await read_json(request)
    _check_fields(state, body, frozenset({"model", "tokens"}))
    tokens = body.get("tokens")
    vocab_size = state.tokenizer.vocab_size
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise bad_request("tokens must be a list of token ids", "tokens")
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise bad_request(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", "tokens")
    return _json({"prompt": state.tokenizer.decode(tokens)})


def _check_fields(state: ServerState, body: dict, allowed: frozenset) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0], "unsupported_parameter")
    model = body.get("model")
    if model is not None and model != state.model_name:
        message = f"the model '{model}' does not exist (this server serves '{state.model_name}')"
        raise APIError(404, message, "model", "model_not_found")


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean", name)
    return value
