"""HTTP endpoints: OpenAI chat / completions / models, SGLang /generate, health and admin."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from aiohttp import web

from radixserve.server import chat, formatting
from radixserve.server.errors import APIError
from radixserve.server.generation import collect_choices, new_id, stream_choices
from radixserve.server.protocol import completion_prompts, sampling_from_openai
from radixserve.server.sse import SSEWriter
from radixserve.server.state import STATE, check_model, read_json


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/flush_cache", flush_cache)
    app.router.add_get("/get_server_info", server_info)
    app.router.add_get("/metrics", metrics)


def _state(request: web.Request):
    state = request.app[STATE]
    if not state.ready:
        raise APIError(503, state.client.fatal or "the model is still loading", code="model_loading")
    return state


def _json(body: dict, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.ready:
        return _json({"status": "loading" if not state.client.fatal else "failed"}, status=503)
    return _json({"status": "ok"})


def _model_card(state) -> dict:
    return {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "radixserve",
        "max_model_len": getattr(state, "context_length", None),
    }


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"object": "list", "data": [_model_card(state)]})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.match_info["model_id"] != state.model_name:
        raise APIError(404, f"the model '{request.match_info['model_id']}' does not exist", "model", "model_not_found")
    return _json(_model_card(state))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await chat.chat_completions(request, _state(request))


async def completions(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    body = await read_json(request)
    check_model(state, body)
    prompts = completion_prompts(body)
    sampling = sampling_from_openai(body, state.generation_defaults, chat=False)
    sampling.setdefault("max_new_tokens", 16)  # OpenAI's default for completions
    prompt_ids = [state.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
    echo = bool(body.get("echo"))
    if body.get("stream"):
        return await _stream_completions(request, state, body, prompt_ids, sampling, echo)
    n = sampling.get("n", 1)
    results, choices_out = [], []
    # every prompt of the batch is in the engine at once, so they are batched together
    per_prompt = await asyncio.gather(
        *(collect_choices(state.client, ids, sampling, "prompt", first_index=i * n) for i, ids in enumerate(prompt_ids))
    )
    for ids, choices in zip(prompt_ids, per_prompt):
        results.append((len(ids), choices))
        prefix = state.tokenizer.decode(ids) if echo else ""
        for choice in choices:
            logprobs = None
            if sampling.get("return_logprob"):
                logprobs = formatting.completion_logprobs(
                    state.tokenizer,
                    choice.token_ids,
                    choice.logprobs,
                    choice.top_logprobs,
                    len(prefix),
                    choice.last.finish_reason,
                )
            choices_out.append(
                {
                    "index": choice.index,
                    "text": prefix + choice.text,
                    "logprobs": logprobs,
                    **formatting.finish_fields(choice.last),
                }
            )
    return _json(
        {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": state.model_name,
            "choices": choices_out,
            "usage": formatting.usage_of(results),
        }
    )


async def _stream_completions(request, state, body, prompt_ids, sampling, echo) -> web.StreamResponse:
    writer = SSEWriter(request)
    meta = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": state.model_name}
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    n = sampling.get("n", 1)
    totals = [0, 0, 0]  # prompt, completion, cached
    for p_index, ids in enumerate(prompt_ids):
        totals[0] += len(ids)
        echoed = set()
        choices = stream_choices(state.client, ids, sampling, "prompt", first_index=p_index * n)
        async with contextlib.aclosing(choices) as stream:
            async for index, output in stream:
                text = output.text_delta
                if echo and index not in echoed:
                    echoed.add(index)
                    text = state.tokenizer.decode(ids) + text
                logprobs = None
                if sampling.get("return_logprob"):
                    logprobs = formatting.completion_logprobs(
                        state.tokenizer,
                        output.new_token_ids,
                        output.new_logprobs,
                        output.new_top_logprobs,
                        finish_reason=output.finish_reason,
                    )
                finish = formatting.finish_fields(output) if output.finished else {"finish_reason": None}
                await writer.send({**meta, "choices": [{"index": index, "text": text, "logprobs": logprobs, **finish}]})
                if output.finished:
                    totals[1] += output.completion_tokens
                    totals[2] += output.cached_tokens if index == p_index * n else 0
    if include_usage:
        await writer.send({**meta, "choices": [], "usage": formatting.usage(*totals)})
    return await writer.done()


async def flush_cache(request: web.Request) -> web.Response:
    state = _state(request)
    if not await state.client.call("flush_cache"):
        raise APIError(400, "cannot flush the cache while requests are running", code="requests_running")
    return _json({"success": True, "message": "cache flushed"})


async def server_info(request: web.Request) -> web.Response:
    state = _state(request)
    stats = await state.client.call("stats")
    args = {k: v for k, v in vars(state.args).items() if k != "api_key"}
    return _json({**args, **state.client.info, "served_model_name": state.model_name, "stats": stats})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stats = await state.client.call("stats") if state.ready else None
    return web.Response(text=state.metrics.render(stats), content_type="text/plain", charset="utf-8")
