"""OpenAI tool calls: parsing ``tools`` / ``tool_choice``, constraining forced calls, extracting calls.

- ``tool_choice`` "required" or a named function: the output is constrained (JSON schema through
  the grammar backend) to ``{"name": ..., "arguments": {...}}`` for one of the offered functions,
  arguments valid against its ``parameters`` schema.
- "auto" (the default when tools are given): the model answers freely; calls in the formats of the
  families we load are extracted: Hermes / Qwen ``<tool_call>{...}</tool_call>`` blocks and a bare
  Llama 3.1 ``{"name": ..., "parameters": {...}}`` object. Text outside the calls stays content.
- "none": tools are only shown to the model.

Models whose chat template ignores ``tools`` get them described in a system message (Hermes style),
so the model knows what it may call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from radixserve.server.errors import bad_request

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class ToolRequest:
    tools: list[dict]
    choice: str  # "auto" | "required" | "none" | "named"
    named: str | None = None

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "named")

    def call_schema(self) -> dict:
        """The JSON schema a forced call must satisfy."""
        functions = [t["function"] for t in self.tools if self.choice != "named" or t["function"]["name"] == self.named]
        options = [
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": f.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"],
            }
            for f in functions
        ]
        return options[0] if len(options) == 1 else {"anyOf": options}


def parse_tools(body: dict) -> ToolRequest | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list) or not all(_is_function_tool(t) for t in tools):
        raise bad_request("tools must be a list of {type: function, function: {name, parameters}}", "tools")
    names = [t["function"]["name"] for t in tools]
    if choice is None or choice in ("auto", "none", "required"):
        return ToolRequest(tools, choice or "auto")
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if named not in names:
        raise bad_request(f"tool_choice names a function that is not in tools: {named!r}", "tool_choice")
    return ToolRequest(tools, "named", named)


def _is_function_tool(tool) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return (
        tool.get("type") == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("parameters", {}), dict)
    )


def messages_with_tools(messages: list[dict], tool_request: ToolRequest, template: str | None) -> list[dict]:
    """Describe the tools in a system message when the chat template would not show them."""
    if template and "tools" in template:
        return messages
    described = "\n".join(json.dumps(t["function"]) for t in tool_request.tools)
    note = (
        "You may call these functions. To call one, answer with "
        '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>\n'
        f"<tools>\n{described}\n</tools>"
    )
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{_text(messages[0])}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _text(message: dict) -> str:
    content = message.get("content") or ""
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def extract_tool_calls(text: str, tool_request: ToolRequest) -> tuple[str | None, list[dict]]:
    """Split a finished answer into (content, tool_calls). Calls to unknown functions are left as text."""
    names = {t["function"]["name"] for t in tool_request.tools}
    if tool_request.forced:
        call = _as_call(text.strip(), names)
        return (None, [call]) if call else (text, [])
    calls = [c for c in (_as_call(block, names) for block in _TAGGED.findall(text)) if c]
    if calls:
        rest = _TAGGED.sub("", text).strip()
        return (rest or None), calls
    call = _as_call(text.strip(), names)  # Llama 3.1 style: the whole answer is one JSON call
    return (None, [call]) if call else (text, [])


def _as_call(raw: str, names: set[str]) -> dict | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
