"""End-to-end through the real server with the official openai client (first slice of the server issue)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion_answers_and_reports_cached_tokens(client):
    first = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=CAPITAL, temperature=0, max_tokens=24
    )
    assert "Paris" in first.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length")
    assert isinstance(first.usage.prompt_tokens_details.cached_tokens, int)
    second = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=CAPITAL, temperature=0, max_tokens=24
    )
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1


def test_streaming_chat_matches_non_streaming(client):
    full = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=CAPITAL, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=CAPITAL,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == full.choices[0].finish_reason


def test_completions_with_token_id_prompts_and_n(client):
    out = client.completions.create(
        model="SmolLM2-135M-Instruct",
        prompt=[[504, 3575, 282], [504, 3575]],
        max_tokens=4,
        temperature=0.8,
        n=2,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.usage.completion_tokens == 16 and out.usage.prompt_tokens == 5
    assert all(c.finish_reason == "length" for c in out.choices)


def test_errors_are_openai_shaped(client, server_url):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[], max_tokens=4)
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=CAPITAL, temperature=-1)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=CAPITAL, max_tokens=10**7)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=CAPITAL)
    assert err.value.body["code"] == "model_not_found"
    request = urllib.request.Request(server_url + "/v1/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(request)
    assert http_err.value.code == 400
    assert set(json.loads(http_err.value.read())["error"]) == {"message", "type", "param", "code"}
