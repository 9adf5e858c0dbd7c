"""``POST /v1/chat/completions``: messages through the chat template, optional tools, SSE streaming."""

from __future__ import annotations

import contextlib
import json
import time

import orjson
from aiohttp import web

from radixserve.server import formatting
from radixserve.server.errors import bad_request
from radixserve.server.generation import Choice, collect_choices, new_id, stream_choices
from radixserve.server.protocol import chat_messages, fill_max_tokens, sampling_from_openai
from radixserve.server.sse import SSEWriter
from radixserve.server.state import check_model, read_json
from radixserve.server.tool_calls import ToolRequest, extract_tool_calls, messages_with_tools, parse_tools


async def chat_completions(request: web.Request, state) -> web.StreamResponse:
    body = await read_json(request)
    check_model(state, body)
    messages = chat_messages(body)
    sampling = sampling_from_openai(body, state.generation_defaults, chat=True)
    tools = parse_tools(body)
    if tools is not None:
        messages = messages_with_tools(messages, tools, state.tokenizer.chat_template)
        if tools.forced:
            if any(k in sampling for k in ("json_schema", "regex", "ebnf", "json_object")):
                raise bad_request(
                    "a forced tool_choice cannot be combined with another output constraint", "tool_choice"
                )
            sampling["json_schema"] = json.dumps(tools.call_schema())
    try:
        prompt_ids = state.tokenizer.encode_chat(messages, tools=tools.tools if tools else None)
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc
    sampling = fill_max_tokens(sampling, len(prompt_ids), state.token_limit)
    if body.get("stream"):
        return await _stream_chat(request, state, body, prompt_ids, sampling, tools)
    choices = await collect_choices(state.client, prompt_ids, sampling, "messages")
    return _json(
        {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.model_name,
            "choices": [_choice_body(state, c, sampling, tools) for c in choices],
            "usage": formatting.usage_of([(len(prompt_ids), choices)]),
        }
    )


def _json(body: dict) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _message(text: str, tools: ToolRequest | None) -> tuple[dict, bool]:
    """The assistant message for a finished answer, and whether it carries tool calls."""
    if tools is None or tools.choice == "none":
        return {"role": "assistant", "content": text}, False
    content, calls = extract_tool_calls(text, tools)
    if not calls:
        return {"role": "assistant", "content": text}, False
    return {"role": "assistant", "content": content, "tool_calls": calls}, True


def _choice_body(state, choice: Choice, sampling: dict, tools: ToolRequest | None) -> dict:
    logprobs = None
    if sampling.get("return_logprob"):
        logprobs = formatting.chat_logprobs(
            state.tokenizer, choice.token_ids, choice.logprobs, choice.top_logprobs, choice.last.finish_reason
        )
    message, called = _message(choice.text, tools)
    finish = formatting.finish_fields(choice.last)
    if called:
        finish["finish_reason"] = "tool_calls"
    return {"index": choice.index, "message": message, "logprobs": logprobs, **finish}


async def _stream_chat(request, state, body, prompt_ids, sampling, tools: ToolRequest | None) -> web.StreamResponse:
    """Role chunk, content deltas, finish chunk, optional usage chunk, ``[DONE]``.

    With tools (other than "none") a choice's text is held until it finishes, then sent as one
    content delta or one ``tool_calls`` delta, so calls are never streamed half-parsed.
    """
    writer = SSEWriter(request)
    meta = {
        "id": new_id("chatcmpl"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": state.model_name,
    }
    hold = tools is not None and tools.choice != "none"
    held: dict[int, str] = {}
    completion_tokens, cached = 0, 0

    async def send(index: int, delta: dict, logprobs=None, finish: dict | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, **(finish or {"finish_reason": None})}
        await writer.send({**meta, "choices": [choice]})

    async with contextlib.aclosing(stream_choices(state.client, prompt_ids, sampling, "messages")) as stream:
        async for index, output in stream:
            if index not in held:
                held[index] = ""
                await send(index, {"role": "assistant", "content": ""})
            logprobs = None
            if sampling.get("return_logprob"):
                logprobs = formatting.chat_logprobs(
                    state.tokenizer,
                    output.new_token_ids,
                    output.new_logprobs,
                    output.new_top_logprobs,
                    output.finish_reason,
                )
            if hold:
                held[index] += output.text_delta
            elif output.text_delta or (logprobs and logprobs["content"]):
                await send(index, {"content": output.text_delta}, logprobs)
            if not output.finished:
                continue
            completion_tokens += output.completion_tokens
            cached = cached if index else output.cached_tokens
            finish = formatting.finish_fields(output)
            if hold:
                message, called = _message(held[index], tools)
                delta = (
                    {"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]} if called else {}
                )
                if message.get("content"):
                    delta["content"] = message["content"]
                await send(index, delta)
                finish["finish_reason"] = "tool_calls" if called else finish["finish_reason"]
            await send(index, {}, None, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        await writer.send(
            {**meta, "choices": [], "usage": formatting.usage(len(prompt_ids), completion_tokens, cached)}
        )
    return await writer.done()
