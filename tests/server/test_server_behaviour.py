"""Server behaviour through the real process: metrics, disconnects, auth, limits, OpenAI details."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

from radixserve.server.launch import dump_stacks, start_server, stop_server, wait_healthy

MODEL = "SmolLM2-135M-Instruct"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _metrics(server_url: str) -> dict[str, float]:
    status, body = _get(server_url + "/metrics")
    assert status == 200
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _wait_idle(server_url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = json.loads(_get(server_url + "/get_server_info")[1])["stats"]
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv"]["protected"] == 0:
            return stats
        assert time.monotonic() < deadline, f"requests still hold KV: {stats}"
        time.sleep(0.1)


def test_metrics_count_tokens_hits_and_latencies(client, server_url):
    before = _metrics(server_url)
    reply = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=8)
    again = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=8)
    after = _metrics(server_url)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    usage = reply.usage.prompt_tokens + again.usage.prompt_tokens
    assert delta["radixserve:prompt_tokens_total"] == usage
    assert delta["radixserve:prefix_cache_query_tokens_total"] == usage
    hits = reply.usage.prompt_tokens_details.cached_tokens + again.usage.prompt_tokens_details.cached_tokens
    assert delta["radixserve:prefix_cache_hit_tokens_total"] == hits
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert delta["radixserve:generation_tokens_total"] == reply.usage.completion_tokens + again.usage.completion_tokens
    assert delta["radixserve:time_to_first_token_seconds_count"] == 2
    assert delta["radixserve:e2e_request_latency_seconds_count"] == 2
    finished = sum(v for k, v in delta.items() if k.startswith("radixserve:request_success_total"))
    assert finished == 2
    assert after["radixserve:num_requests_running"] == 0
    assert 0 <= after["radixserve:kv_cache_usage_perc"] <= 1


def test_client_disconnect_mid_stream_aborts_and_frees_kv(server_url):
    body = json.dumps(
        {
            "model": MODEL,
            "messages": CAPITAL,
            "max_tokens": 3000,
            "stream": True,
            "ignore_eos": True,
            "min_tokens": 3000,
        }
    ).encode()
    host, port = server_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    for _ in range(5):
        assert response.readline()  # a few SSE lines arrive
    before = _metrics(server_url).get('radixserve:request_success_total{finish_reason="abort"}', 0)
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    _wait_idle(server_url)
    deadline = time.monotonic() + 5
    while _metrics(server_url).get('radixserve:request_success_total{finish_reason="abort"}', 0) <= before:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_client_disconnect_on_a_non_streaming_request_frees_kv(server_url):
    body = json.dumps({"model": MODEL, "messages": CAPITAL, "max_tokens": 3000, "ignore_eos": True}).encode()
    request = urllib.request.Request(
        server_url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(request, timeout=1.5)
    _wait_idle(server_url)


def test_request_body_over_the_limit_is_413(server_url):
    payload = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (33 * 2**20) + b'"}]}'
    request = urllib.request.Request(
        server_url + "/v1/chat/completions", data=payload, headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError("expected 413")
    except urllib.error.HTTPError as err:
        assert err.code == 413
        assert json.loads(err.read())["error"]["type"] == "invalid_request_error"
    except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
        pass  # the server may close the socket while the client is still sending


def test_chat_stop_strings_n_and_logprobs(client):
    free = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=20)
    text = free.choices[0].message.content
    stop = text.split()[2]
    stopped = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=20, stop=[stop])
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].model_extra["matched_stop"] == stop
    many = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=1.0, seed=3, n=3, max_tokens=8, logprobs=True, top_logprobs=2
    )
    assert [c.index for c in many.choices] == [0, 1, 2]
    for choice in many.choices:
        content = choice.logprobs.content
        assert "".join(t.token for t in content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_streamed_logprobs_belong_to_their_chunk(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=10, logprobs=True, stream=True
    )
    tokens = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs:
            piece = "".join(t.token for t in chunk.choices[0].logprobs.content)
            assert piece == chunk.choices[0].delta.content
            tokens += chunk.choices[0].logprobs.content
    assert len(tokens) >= 1


def test_completion_echo_and_cached_tokens_on_repeat(client):
    prompt = "The quick brown fox jumps over the lazy dog because"
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, echo=True)
    assert first.choices[0].text.startswith(prompt)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1
    assert first.choices[0].text == prompt + second.choices[0].text


def test_models_endpoints(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.fixture(scope="module")
def keyed_server(default_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("keyed") / "stderr.log"
    with log.open("wb") as stderr:
        process, url = start_server(
            "--api-key", "s3cret", "--max-total-tokens", "2048", "--served-model-name", "smol", "--log-level", "warning",
            stderr=stderr,
        )  # fmt: skip
    try:
        statuses = wait_healthy(url, process, timeout=120)  # what /health said while the model loaded
        yield url, statuses, process, log
    finally:
        stop_server(process)


def test_health_is_503_while_loading_then_200(keyed_server):
    _, statuses, _, _ = keyed_server
    assert statuses[0] == 503 and statuses[-1] == 200


def test_sigusr1_dumps_the_server_and_engine_stacks_and_serving_goes_on(keyed_server):
    url, _, process, log = keyed_server
    dump_stacks(process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "radixserve/engine/process.py" in text and "radixserve/cli.py" in text:
            break
        time.sleep(0.1)
    assert "radixserve/engine/process.py" in text, text[-2000:]  # the engine process's loop
    assert "radixserve/cli.py" in text, text[-2000:]  # the server's main thread
    assert _get(url + "/health")[0] == 200


def test_api_key_protects_everything_but_health(keyed_server):
    url, _, _, _ = keyed_server
    assert _get(url + "/health")[0] == 200
    status, body = _get(url + "/v1/models")
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert _get(url + "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    assert _get(url + "/v1/models", {"Authorization": "Bearer s3cret"})[0] == 200
    keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
    reply = keyed.chat.completions.create(model="smol", messages=CAPITAL, max_tokens=4, temperature=0)
    assert reply.model == "smol"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="bad", max_retries=0).models.list()


def test_prompt_longer_than_the_context_is_a_400_naming_messages(keyed_server):
    url, _, _, _ = keyed_server
    keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
    long_text = "word " * 3000
    with pytest.raises(openai.BadRequestError) as err:
        keyed.chat.completions.create(model="smol", messages=[{"role": "user", "content": long_text}])
    assert err.value.body["param"] == "messages"
    assert re.search(r"\d+", err.value.body["message"])


def test_flush_cache_is_refused_while_requests_run(server_url):
    body = json.dumps(
        {"model": MODEL, "messages": CAPITAL, "max_tokens": 120, "stream": True, "ignore_eos": True}
    ).encode()
    host, port = server_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.readline()
    flush = urllib.request.Request(server_url + "/flush_cache", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(flush, timeout=30)
    assert err.value.code == 400 and json.loads(err.value.read())["error"]["code"] == "requests_running"
    response.read()  # let the stream finish
    connection.close()
    _wait_idle(server_url)
    with urllib.request.urlopen(flush, timeout=30) as ok:
        assert json.loads(ok.read())["success"] is True
    assert _wait_idle(server_url)["kv"]["evictable"] == 0


def test_server_info_reports_configuration_and_stats(server_url):
    status, body = _get(server_url + "/get_server_info")
    info = json.loads(body)
    assert status == 200
    assert info["max_total_tokens"] == 8192 and info["schedule_policy"] == "lpm"
    assert "api_key" not in info and set(info["stats"]["kv"]) == {"pool_size", "free", "evictable", "protected"}


def test_serve_help_documents_sglang_flags():
    out = subprocess.run(
        [sys.executable, "-m", "radixserve", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = [
        "--model-path",
        "--tokenizer-path",
        "--host",
        "--port",
        "--served-model-name",
        "--api-key",
        "--dtype",
        "--device",
        "--mem-fraction-static",
        "--max-running-requests",
        "--max-total-tokens",
        "--chunked-prefill-size",
        "--schedule-policy",
        "--disable-radix-cache",
        "--attention-backend",
        "--load-format",
        "--chat-template",
        "--context-length",
        "--log-level",
    ]
    assert [f for f in flags if f not in out] == []
