"""Hand-written OpenAPI 3.1 request / response schemas for the main endpoints.

``OPERATIONS`` maps ``(METHOD, path)`` to the operation's summary, request body and responses;
``SCHEMAS`` is ``components.schemas``. Routes without an entry here are still documented
(``openapi.py`` lists the router), with a generic response. ``SamplingParams`` is derived from
the fields /generate accepts, so it cannot drift from the validator.
"""

from __future__ import annotations

from radixserve.server.native_request import SAMPLING_TYPES

_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict, required: tuple = (), **extra) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: dict) -> dict:
    return {"type": "array", "items": items}


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NULLABLE_STR = {"type": ["string", "null"]}
_STOP = {"oneOf": [_STR, _array(_STR)], "description": "stop string(s), at most 16"}
_TOKENS = _array({"type": "integer", "minimum": 0})


def _sampling_params_schema() -> dict:
    properties = {}
    for name, kind in SAMPLING_TYPES.items():
        properties[name] = (
            {"type": [_JSON_TYPES[kind], "null"]} if kind in _JSON_TYPES else {"type": ["integer", "null"]}
        )
    properties["stop"] = _STOP
    properties["stop_token_ids"] = _TOKENS
    properties["logit_bias"] = {"type": "object", "additionalProperties": _NUM, "description": "token id -> bias"}
    properties["sampling_seed"] = {"type": ["integer", "null"], "description": "SGLang's name for seed"}
    properties["max_new_tokens"] = {"type": "integer", "minimum": 0, "default": 128}
    properties["n"] = {"type": "integer", "minimum": 1, "maximum": 16, "default": 1}
    return _obj(properties, additionalProperties=False, description="SGLang sampling parameters; null = default")


_OPENAI_SAMPLING = {
    "model": _STR,
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": _NUM,
    "top_p": _NUM,
    "n": {"type": "integer", "minimum": 1, "maximum": 16},
    "stop": _STOP,
    "stream": _BOOL,
    "stream_options": _obj({"include_usage": _BOOL}),
    "seed": _INT,
    "presence_penalty": _NUM,
    "frequency_penalty": _NUM,
    "logit_bias": {"type": "object", "additionalProperties": _NUM},
    "top_k": _INT,
    "min_p": _NUM,
    "repetition_penalty": _NUM,
    "min_tokens": _INT,
    "ignore_eos": _BOOL,
    "stop_token_ids": _TOKENS,
    "no_stop_trim": _BOOL,
    "skip_special_tokens": _BOOL,
}
_CHAT_MESSAGE = _obj(
    {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {"oneOf": [_STR, _array(_obj({"type": {"const": "text"}, "text": _STR}, ("type", "text")))]},
    },
    ("role", "content"),
)
_FINISH = {
    "finish_reason": {"enum": ["stop", "length", "abort", None]},
    "matched_stop": {"type": ["integer", "string", "null"]},
}

SCHEMAS: dict = {
    "Error": _obj(
        {"error": _obj({"message": _STR, "type": _STR, "param": _NULLABLE_STR, "code": _NULLABLE_STR}, ("message",))},
        ("error",),
    ),
    "Usage": _obj(
        {
            "prompt_tokens": _INT,
            "completion_tokens": _INT,
            "total_tokens": _INT,
            "prompt_tokens_details": _obj({"cached_tokens": _INT}),
        }
    ),
    "ChatMessage": _CHAT_MESSAGE,
    "ChatCompletionRequest": _obj(
        {
            "messages": _array(ref("ChatMessage")),
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "logprobs": _BOOL,
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
            **_OPENAI_SAMPLING,
        },
        ("messages",),
    ),
    "ChatCompletion": _obj(
        {
            "id": _STR,
            "object": {"const": "chat.completion"},
            "created": _INT,
            "model": _STR,
            "choices": _array(
                _obj({"index": _INT, "message": _obj({"role": _STR, "content": _STR}), "logprobs": {}, **_FINISH})
            ),
            "usage": ref("Usage"),
        }
    ),
    "CompletionRequest": _obj(
        {
            "prompt": {"oneOf": [_STR, _array(_STR), _TOKENS, _array(_TOKENS)]},
            "echo": _BOOL,
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
            **_OPENAI_SAMPLING,
        },
        ("prompt",),
    ),
    "Completion": _obj(
        {
            "id": _STR,
            "object": {"const": "text_completion"},
            "created": _INT,
            "model": _STR,
            "choices": _array(_obj({"index": _INT, "text": _STR, "logprobs": {}, **_FINISH})),
            "usage": ref("Usage"),
        }
    ),
    "Model": _obj({"id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR, "max_model_len": _INT}),
    "ModelList": _obj({"object": {"const": "list"}, "data": _array(ref("Model"))}),
    "SamplingParams": _sampling_params_schema(),
    "GenerateRequest": _obj(
        {
            "text": {"oneOf": [_STR, _array(_STR)], "description": "exactly one of text or input_ids"},
            "input_ids": {"oneOf": [_TOKENS, _array(_TOKENS)]},
            "sampling_params": {"oneOf": [ref("SamplingParams"), _array(ref("SamplingParams"))]},
            "rid": {"oneOf": [_STR, _array(_STR)]},
            "stream": _BOOL,
            "return_logprob": {"oneOf": [_BOOL, _array(_BOOL)]},
            "top_logprobs_num": {"oneOf": [_INT, _array(_INT)]},
            "logprob_start_len": {"const": -1, "description": "only output logprobs are returned"},
            "return_text_in_logprobs": _BOOL,
        },
        additionalProperties=False,
    ),
    "FinishReason": {
        "type": ["object", "null"],
        "properties": {
            "type": {"enum": ["stop", "length", "abort"]},
            "matched": {"type": ["integer", "string"], "description": "the stop token id or stop string"},
            "length": _INT,
            "message": _STR,
        },
    },
    "GenerateOutput": _obj(
        {
            "text": _STR,
            "output_ids": _TOKENS,
            "index": {"type": "integer", "description": "streamed batch chunks only: the sample's position"},
            "meta_info": _obj(
                {
                    "id": _STR,
                    "finish_reason": ref("FinishReason"),
                    "prompt_tokens": _INT,
                    "completion_tokens": _INT,
                    "cached_tokens": _INT,
                    "e2e_latency": {"type": "number", "description": "seconds; once finished"},
                    "output_token_logprobs": _array(
                        {"type": "array", "prefixItems": [{"type": ["number", "null"]}, _INT, _NULLABLE_STR]}
                    ),
                    "output_top_logprobs": _array({"type": ["array", "null"]}),
                }
            ),
        },
        ("text", "output_ids", "meta_info"),
    ),
    "TokenizeRequest": _obj(
        {
            "model": _STR,
            "prompt": _STR,
            "messages": _array(ref("ChatMessage")),
            "add_special_tokens": {"type": "boolean", "default": True},
            "add_generation_prompt": {"type": "boolean", "default": True},
        },
        description="exactly one of prompt or messages",
    ),
    "TokenizeResponse": _obj({"tokens": _TOKENS, "count": _INT, "max_model_len": _INT}),
    "DetokenizeRequest": _obj({"model": _STR, "tokens": _TOKENS}, ("tokens",)),
    "DetokenizeResponse": _obj({"prompt": _STR}),
    "Health": _obj({"status": {"enum": ["ok", "loading", "failed"]}}),
    "FlushCacheResponse": _obj({"success": _BOOL, "message": _STR}),
    "ServerInfo": {"type": "object", "description": "server arguments, engine info and scheduler stats"},
}


def _body(schema: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": ref(schema)}}}


def _ok(schema: str, description: str = "OK", stream: str | None = None) -> dict:
    content = {"application/json": {"schema": ref(schema)}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string", "description": stream}}
    return {"200": {"description": description, "content": content}}


_GENERATE = {
    "summary": "SGLang native generation",
    "description": "One prompt -> an object; a batch or n > 1 -> a list, prompt-major.",
    "requestBody": _body("GenerateRequest"),
    "responses": {
        "200": {
            "description": "the output(s); streamed as cumulative GenerateOutput chunks, then [DONE]",
            "content": {
                "application/json": {"schema": {"oneOf": [ref("GenerateOutput"), _array(ref("GenerateOutput"))]}},
                "text/event-stream": {"schema": _STR},
            },
        }
    },
}
_TOKENIZE = {"summary": "Text or chat messages to token ids", "requestBody": _body("TokenizeRequest")}
_TOKENIZE["responses"] = _ok("TokenizeResponse")
_DETOKENIZE = {"summary": "Token ids to text", "requestBody": _body("DetokenizeRequest")}
_DETOKENIZE["responses"] = _ok("DetokenizeResponse")

OPERATIONS: dict[tuple[str, str], dict] = {
    ("POST", "/v1/chat/completions"): {
        "summary": "OpenAI chat completion",
        "requestBody": _body("ChatCompletionRequest"),
        "responses": _ok("ChatCompletion", stream="chat.completion.chunk events, then [DONE]"),
    },
    ("POST", "/v1/completions"): {
        "summary": "OpenAI text completion",
        "requestBody": _body("CompletionRequest"),
        "responses": _ok("Completion", stream="text_completion events, then [DONE]"),
    },
    ("GET", "/v1/models"): {"summary": "The served model", "responses": _ok("ModelList")},
    ("GET", "/v1/models/{model_id}"): {"summary": "One model", "responses": _ok("Model")},
    ("POST", "/generate"): _GENERATE,
    ("PUT", "/generate"): _GENERATE,
    ("POST", "/v1/tokenize"): _TOKENIZE,
    ("POST", "/tokenize"): _TOKENIZE,
    ("POST", "/v1/detokenize"): _DETOKENIZE,
    ("POST", "/detokenize"): _DETOKENIZE,
    ("GET", "/health"): {
        "summary": "Liveness: 200 once the model is loaded, 503 before",
        "responses": {
            **_ok("Health"),
            "503": {"description": "loading or failed", "content": {"application/json": {"schema": ref("Health")}}},
        },
    },
    ("POST", "/flush_cache"): {
        "summary": "Empty the radix prefix cache (refused while requests run)",
        "responses": _ok("FlushCacheResponse"),
    },
    ("GET", "/get_server_info"): {"summary": "Server arguments and engine stats", "responses": _ok("ServerInfo")},
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {"schema": _STR}}}},
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
    },
}
