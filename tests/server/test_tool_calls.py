"""Tool calls through the real server, and the extraction of the model families' call formats."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from radixserve.server.tool_calls import ToolRequest, extract_tool_calls

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "pattern": "^[A-Za-z ]{1,30}$"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"enum": ["UTC", "CET", "PST"]}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather in Berlin right now?"}]


def _schema(tool):
    return tool["function"]["parameters"]


def test_named_tool_choice_returns_a_valid_call(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        temperature=0,
        max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), _schema(WEATHER))


def test_required_tool_choice_calls_one_of_the_offered_functions(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
        temperature=0,
        max_tokens=100,
    )
    (call,) = reply.choices[0].message.tool_calls
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), _schema(tool))


def test_streamed_tool_call_and_a_follow_up_turn(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=100,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    arguments = calls[0].function.arguments
    follow_up = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": calls[0].id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=follow_up, tools=[WEATHER], temperature=0, max_tokens=30, tool_choice="none"
    )
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")


def test_auto_mode_answers(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=60)
    message = reply.choices[0].message
    assert message.content or message.tool_calls


def test_bad_tool_requests_are_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    assert err.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[{"type": "function"}])
    assert err.value.body["param"] == "tools"


REQUEST = ToolRequest([WEATHER, TIME], "auto")


def test_extracts_hermes_tagged_calls_and_keeps_the_text_around():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
    content, calls = extract_tool_calls(text, REQUEST)
    assert content == "Let me check."
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}


def test_extracts_two_calls_and_a_llama_style_call():
    text = (
        '<tool_call>{"name": "get_time", "arguments": {"timezone": "UTC"}}</tool_call>'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}</tool_call>'
    )
    content, calls = extract_tool_calls(text, REQUEST)
    assert content is None and [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    content, calls = extract_tool_calls('{"name": "get_time", "parameters": {"timezone": "CET"}}', REQUEST)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"timezone": "CET"}


def test_unknown_functions_and_plain_text_stay_content():
    for text in ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "It is sunny.", '{"a": 1}'):
        content, calls = extract_tool_calls(text, REQUEST)
        assert calls == [] and content == text
