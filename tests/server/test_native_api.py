"""SGLang's native /generate, the tokenizer endpoints and /openapi.json, through the real server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

CAPITAL = "The capital of France is"
GREEDY = {"temperature": 0, "max_new_tokens": 8}


def _request(url: str, body: dict | None = None, method: str | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _post(url: str, body: dict) -> object:
    status, reply = _request(url, body)
    assert status == 200, reply
    return reply


def _error_param(url: str, body: dict, status: int = 400) -> str | None:
    got, reply = _request(url, body)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    return reply["error"]["param"]


def _stream(url: str, body: dict) -> list[dict]:
    """The SSE events of a streamed request, parsed; asserts the stream ends with [DONE]."""
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = response.read().decode().split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    assert all(frame.startswith("data: ") for frame in frames[:-2])
    return [json.loads(frame.removeprefix("data: ")) for frame in frames[:-2]]


def _wait_kv_released(server_url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stats = _request(server_url + "/get_server_info")[1]["stats"]
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv"]["protected"] == 0:
            return
        assert time.monotonic() < deadline, f"requests still hold KV: {stats}"
        time.sleep(0.1)


# ---- /generate ------------------------------------------------------------------------------


def test_generate_one_prompt_returns_sglang_output(server_url):
    out = _post(server_url + "/generate", {"text": CAPITAL, "sampling_params": GREEDY, "rid": "capital-1"})
    meta = out["meta_info"]
    assert "Paris" in out["text"]
    assert meta["id"] == "capital-1"
    assert meta["prompt_tokens"] == 5
    assert meta["completion_tokens"] == len(out["output_ids"]) <= 8
    assert meta["finish_reason"]["type"] in ("stop", "length")
    if meta["finish_reason"]["type"] == "length":
        assert meta["finish_reason"]["length"] == 8
    assert meta["e2e_latency"] > 0
    assert "output_token_logprobs" not in meta


def test_max_new_tokens_defaults_to_128_and_stop_tokens_stay_in_output_ids(server_url):
    # Without max_new_tokens a request asks for 128: too many next to a prompt that nearly fills the context.
    status, reply = _request(server_url + "/generate", {"input_ids": [504] * 8100})
    assert status == 400 and reply["error"]["param"] == "max_new_tokens"
    assert "128 new tokens" in reply["error"]["message"]
    greedy = _post(server_url + "/generate", {"text": CAPITAL, "sampling_params": GREEDY})["output_ids"]
    stop_id = greedy[2]
    stopped = _post(
        server_url + "/generate", {"text": CAPITAL, "sampling_params": {**GREEDY, "stop_token_ids": [stop_id]}}
    )
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert stopped["output_ids"] == greedy[: greedy.index(stop_id) + 1]  # the stop token is in output_ids


def test_input_ids_and_batches_match_the_text_prompt(server_url):
    single = _post(server_url + "/generate", {"text": CAPITAL, "sampling_params": GREEDY})
    by_ids = _post(server_url + "/generate", {"input_ids": [504, 3575, 282, 4649, 314], "sampling_params": GREEDY})
    assert by_ids["text"] == single["text"] and by_ids["output_ids"] == single["output_ids"]
    batch = _post(server_url + "/generate", {"text": [CAPITAL, "1, 2, 3,"], "sampling_params": GREEDY})
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["output_ids"] == single["output_ids"]
    assert batch[1]["meta_info"]["prompt_tokens"] == _post(server_url + "/v1/tokenize", {"prompt": "1, 2, 3,"})["count"]
    id_batch = _post(
        server_url + "/generate",
        {"input_ids": [[504, 3575, 282, 4649, 314], [504, 3575]], "sampling_params": [GREEDY, {"max_new_tokens": 3}]},
    )
    assert [o["meta_info"]["prompt_tokens"] for o in id_batch] == [5, 2]
    assert id_batch[0]["output_ids"] == single["output_ids"]
    assert id_batch[1]["meta_info"]["completion_tokens"] <= 3


def test_n_samples_come_back_prompt_major(server_url):
    sampling = {"n": 2, "temperature": 0.8, "seed": 11, "max_new_tokens": 4, "ignore_eos": True}
    out = _post(
        server_url + "/generate", {"text": [CAPITAL, "1, 2, 3,"], "sampling_params": sampling, "rid": ["a", "b"]}
    )
    assert [o["meta_info"]["id"] for o in out] == ["a-0", "a-1", "b-0", "b-1"]
    count = _post(server_url + "/v1/tokenize", {"prompt": "1, 2, 3,"})["count"]
    assert [o["meta_info"]["prompt_tokens"] for o in out] == [5, 5, count, count]
    assert all(o["meta_info"]["completion_tokens"] == 4 for o in out)
    one_prompt = _post(server_url + "/generate", {"text": CAPITAL, "sampling_params": sampling, "rid": "c"})
    assert [o["meta_info"]["id"] for o in one_prompt] == ["c-0", "c-1"]


def test_stream_chunks_carry_the_output_so_far(server_url):
    body = {"text": CAPITAL, "sampling_params": GREEDY}
    full = _post(server_url + "/generate", body)
    chunks = _stream(server_url + "/generate", body)
    assert len(chunks) > 1
    for before, after in zip(chunks, chunks[1:]):
        assert after["text"].startswith(before["text"])
        assert after["output_ids"][: len(before["output_ids"])] == before["output_ids"]
    assert chunks[-1]["text"] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]
    assert [c["meta_info"]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
    assert "e2e_latency" in chunks[-1]["meta_info"] and "index" not in chunks[-1]


def test_batch_stream_marks_each_chunk_with_its_index(server_url):
    body = {"text": [CAPITAL, "1, 2, 3,"], "sampling_params": GREEDY}
    full = _post(server_url + "/generate", body)
    chunks = _stream(server_url + "/generate", body)
    last = {}
    for chunk in chunks:
        last[chunk["index"]] = chunk
    assert sorted(last) == [0, 1]
    assert [last[i]["text"] for i in (0, 1)] == [o["text"] for o in full]


def test_logprobs_are_triples_aligned_with_output_ids(server_url):
    body = {"text": CAPITAL, "sampling_params": GREEDY, "return_logprob": True, "top_logprobs_num": 3}
    out = _post(server_url + "/generate", {**body, "return_text_in_logprobs": True})
    meta = out["meta_info"]
    assert [t[1] for t in meta["output_token_logprobs"]] == out["output_ids"]
    assert len(meta["output_top_logprobs"]) == meta["completion_tokens"]
    for (logprob, token_id, text), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert logprob <= 0 and isinstance(text, str)
        assert len(top) == 3 and top[0][1] == token_id  # greedy: the sampled token is the most likely
        assert abs(top[0][0] - logprob) < 1e-4
    plain = _post(server_url + "/generate", {**body, "top_logprobs_num": 0})["meta_info"]
    assert all(t[2] is None for t in plain["output_token_logprobs"]) and "output_top_logprobs" not in plain


def test_a_repeated_prompt_hits_the_prefix_cache(server_url):
    body = {"text": "Radix trees share prefixes between the prompts of requests.", "sampling_params": GREEDY}
    _post(server_url + "/generate", body)
    meta = _post(server_url + "/generate", body)["meta_info"]
    assert meta["cached_tokens"] == meta["prompt_tokens"] - 1


def test_generate_errors_name_the_parameter(server_url):
    url = server_url + "/generate"
    assert _error_param(url, {"text": CAPITAL, "input_ids": [1, 2]}) == "input_ids"
    assert _error_param(url, {"sampling_params": GREEDY}) == "text"
    assert _error_param(url, {"text": CAPITAL, "sampling_params": {"temperature": -1}}) == "temperature"
    assert _error_param(url, {"text": CAPITAL, "sampling_params": {"max_new_tokens": "12"}}) == "max_new_tokens"
    assert _error_param(url, {"text": CAPITAL, "sampling_params": {"temprature": 0}}) == "temprature"
    assert _error_param(url, {"text": CAPITAL, "sampling_params": {"return_logprob": True}}) == "return_logprob"
    assert _error_param(url, {"text": CAPITAL, "max_new_tokens": 4}) == "max_new_tokens"
    assert _error_param(url, {"input_ids": [1, 10**9]}) == "input_ids"
    assert _error_param(url, {"text": ["a", "b"], "sampling_params": [GREEDY]}) == "sampling_params"
    assert _error_param(url, {"text": ["a", "b"], "rid": "same"}) == "rid"
    assert _error_param(url, {"text": "", "sampling_params": GREEDY}) == "text"
    assert _error_param(url, {"text": CAPITAL, "stream": True, "sampling_params": {"top_p": 0}}) == "top_p"


def test_a_rejected_prompt_fails_the_batch_and_frees_the_rest(server_url):
    body = {"text": [CAPITAL, CAPITAL], "sampling_params": [{"max_new_tokens": 64}, {"max_new_tokens": 10**6}]}
    assert _error_param(server_url + "/generate", body) == "max_new_tokens"
    _wait_kv_released(server_url)


# ---- tokenizer endpoints --------------------------------------------------------------------


def test_tokenize_and_detokenize_round_trip_a_prompt(server_url):
    tokens = _post(server_url + "/v1/tokenize", {"prompt": CAPITAL})
    assert tokens["tokens"] == [504, 3575, 282, 4649, 314]
    assert tokens["count"] == 5 and tokens["max_model_len"] >= 2048
    assert _post(server_url + "/v1/detokenize", {"tokens": tokens["tokens"]}) == {"prompt": CAPITAL}


def test_tokenize_chat_messages_applies_the_template(server_url):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tokens = _post(server_url + "/v1/tokenize", {"messages": messages})["tokens"]
    text = _post(server_url + "/v1/detokenize", {"tokens": tokens})["prompt"]
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    bare = _post(server_url + "/v1/tokenize", {"messages": messages, "add_generation_prompt": False})["tokens"]
    assert tokens[: len(bare)] == bare and len(bare) < len(tokens)


def test_tokenizer_endpoint_errors(server_url):
    assert _error_param(server_url + "/v1/detokenize", {"tokens": [1, 10**9]}) == "tokens"
    assert _error_param(server_url + "/v1/detokenize", {"tokens": "abc"}) == "tokens"
    assert _error_param(server_url + "/v1/tokenize", {"prompt": "a", "messages": []}) == "prompt"
    assert _error_param(server_url + "/v1/tokenize", {"prompt": 5}) == "prompt"
    assert _error_param(server_url + "/v1/tokenize", {"prompt": "a", "model": "gpt-nope"}, 404) == "model"


# ---- /openapi.json --------------------------------------------------------------------------

EXPECTED_ROUTES = {
    ("get", "/health"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model_id}"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
    ("post", "/flush_cache"),
    ("get", "/get_server_info"),
    ("get", "/metrics"),
    ("post", "/generate"),
    ("post", "/v1/tokenize"),
    ("post", "/v1/detokenize"),
    ("get", "/openapi.json"),
}


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_openapi_lists_every_route_the_server_serves(server_url):
    status, doc = _request(server_url + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    routes = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert not EXPECTED_ROUTES - routes, EXPECTED_ROUTES - routes
    assert "head" not in {method for method, _ in routes}
    for method, path in routes:  # nothing documented that the server does not route
        if method == "get" and "{" not in path:
            assert _status(server_url + path) != 404, path
        operation = doc["paths"][path][method]
        assert operation["responses"] and operation["operationId"]
    for target in _refs(doc):
        name = target.removeprefix("#/components/schemas/")
        assert name in doc["components"]["schemas"], target
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "--api-key",
    }
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"][0]["name"] == "model_id"
