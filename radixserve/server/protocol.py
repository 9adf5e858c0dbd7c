"""Parsing and validating OpenAI / SGLang request bodies into engine inputs (prompt + sampling dict)."""

from __future__ import annotations

from typing import Any

import orjson

from radixserve.core.sampling_params import InvalidParamError, SamplingParams
from radixserve.server.errors import bad_request

MAX_N = 16

# OpenAI name -> SamplingParams name
_OPENAI_TO_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "n": "n",
    "logit_bias": "logit_bias",
    # SGLang extras
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "stop_token_ids": "stop_token_ids",
    "no_stop_trim": "no_stop_trim",
    "skip_special_tokens": "skip_special_tokens",
    "json_schema": "json_schema",
    "regex": "regex",
    "ebnf": "ebnf",
}
# Read elsewhere (prompt, streaming, limits, logprobs, format), or accepted with no effect on the
# output by design (user, metadata, store, service_tier). Anything else is refused, never dropped.
_ACCEPTED_NO_EFFECT = {
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "model",
    "messages",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "echo",
    "metadata",
    "store",
    "service_tier",
}


def sampling_from_openai(body: dict[str, Any], defaults: dict, chat: bool) -> dict:
    """Build a validated SamplingParams dict from an OpenAI-style body. Raises APIError (400).

    ``defaults`` (the model's generation_config) fill what the body leaves out. Without
    ``max_tokens`` the dict has no ``max_new_tokens``: the caller fills it per prompt with what the
    context leaves (``fill_max_tokens``).
    """
    unknown = sorted(set(body) - set(_OPENAI_TO_SAMPLING) - _ACCEPTED_NO_EFFECT)
    if unknown:
        raise bad_request(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0], "unsupported_parameter")
    params: dict[str, Any] = {"temperature": 1.0, **defaults}
    for name, target in _OPENAI_TO_SAMPLING.items():
        if body.get(name) is not None:
            params[target] = body[name]
    params.update(_response_format(body.get("response_format")))
    max_tokens = _max_tokens(body)
    if max_tokens is not None:
        params["max_new_tokens"] = max_tokens
    _logprob_params(body, params, chat)
    if isinstance(params.get("logit_bias"), dict):
        params["logit_bias"] = _logit_bias(params["logit_bias"])
    try:
        sampling = SamplingParams.from_dict(params)
    except (InvalidParamError, TypeError, ValueError) as exc:
        raise bad_request(str(exc), getattr(exc, "param", None)) from exc
    if sampling.n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}", "n")
    return params


def _response_format(response_format) -> dict:
    """OpenAI ``response_format`` as a sampling constraint: text, json_object or json_schema."""
    if response_format is None:
        return {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request(
                "response_format.json_schema.schema must be a JSON schema object", "response_format.json_schema"
            )
        return {"json_schema": orjson.dumps(schema).decode()}
    raise bad_request("response_format.type must be text, json_object or json_schema", "response_format.type")


def _max_tokens(body: dict) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise bad_request(f"{name} must be a positive integer", name)
        return value
    return None


def fill_max_tokens(sampling: dict, prompt_len: int, token_limit: int) -> dict:
    """The sampling dict for one prompt: without an explicit max, generate up to what the context
    (or the KV pool, if smaller) leaves after the prompt."""
    if "max_new_tokens" in sampling:
        return sampling
    return {**sampling, "max_new_tokens": max(1, token_limit - prompt_len)}


def _logprob_params(body: dict, params: dict, chat: bool) -> None:
    if chat:
        if body.get("logprobs"):
            params["return_logprob"] = True
            params["top_logprobs_num"] = body.get("top_logprobs") or 0
        elif body.get("top_logprobs"):
            raise bad_request("top_logprobs requires logprobs: true", "top_logprobs")
    elif body.get("logprobs") is not None:
        value = body["logprobs"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 5:
            raise bad_request("logprobs must be an integer in [0, 5]", "logprobs")
        params["return_logprob"] = True
        params["top_logprobs_num"] = value


def _logit_bias(raw: dict) -> dict[int, float]:
    try:
        return {int(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise bad_request("logit_bias keys must be token ids and values numbers", "logit_bias") from exc


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "user",
            "assistant",
            "developer",
            "tool",
        ):
            raise bad_request(f"messages[{i}] needs a role of system, user, assistant or tool", f"messages[{i}].role")
        content = message.get("content")
        if content is None and message.get("tool_calls"):
            continue  # an assistant turn that only called tools
        if not isinstance(content, (str, list)):
            raise bad_request(
                f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content"
            )
    return [_normalize_role(m) for m in messages]


def _normalize_role(message: dict) -> dict:
    """developer -> system; an assistant's tool calls written as Hermes ``<tool_call>`` text for templates."""
    message = {**message, "role": "system" if message["role"] == "developer" else message["role"]}
    calls = message.pop("tool_calls", None)
    if calls:
        rendered = [f"<tool_call>{_call_text(call)}</tool_call>" for call in calls]
        message["content"] = "\n".join([message.get("content") or "", *rendered]).strip()
    return message


def _call_text(call) -> str:
    try:
        function = call["function"]
        return orjson.dumps({"name": function["name"], "arguments": orjson.loads(function["arguments"])}).decode()
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise bad_request("an assistant tool call needs function.name and JSON function.arguments", "messages") from exc


def completion_prompts(body: dict) -> list[str | list[int]]:
    """A prompt as a string, a list of strings, token ids or lists of token ids."""
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_token(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad_request("'prompt' must be a string, a list of strings, token ids, or lists of token ids", "prompt")


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
