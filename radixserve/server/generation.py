"""Running n choices of one prompt through the engine client, merged into one async stream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from radixserve.core.sampling_params import InvalidParamError, child_seed
from radixserve.engine.output_processor import RequestOutput
from radixserve.server.errors import bad_request

# Engine parameter names -> the OpenAI names users sent.
_PARAM_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list = field(default_factory=list)
    last: RequestOutput | None = None

    def add(self, output: RequestOutput) -> None:
        self.text += output.text_delta
        self.token_ids.extend(output.new_token_ids)
        self.logprobs.extend(output.new_logprobs)
        self.top_logprobs.extend(output.new_top_logprobs)
        self.last = output


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


async def stream_choices(
    client, prompt_ids: list[int], sampling: dict, prompt_param: str, first_index: int = 0, stream: bool = True
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Yield (choice index, output) as any of the n choices produces tokens (``stream=False``: the
    text whole in each choice's last output)."""
    n = sampling.get("n", 1)
    base_id = new_id("req")
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int) -> None:
        params = {**sampling, "n": 1}
        if params.get("seed") is not None:
            params["seed"] = child_seed(params["seed"], i)
        try:
            async for output in client.generate(f"{base_id}-{i}", prompt_ids, params, stream=stream):
                await queue.put((first_index + i, output))
        except Exception as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(i)) for i in range(n)]
    remaining = n
    try:
        while remaining:
            item = await queue.get()
            if isinstance(item, InvalidParamError):
                raise bad_request(
                    str(item), _PARAM_NAMES.get(item.param, item.param) if item.param != "prompt" else prompt_param
                )
            if isinstance(item, Exception):
                raise item
            if item[1].finished:
                remaining -= 1
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect_choices(
    client, prompt_ids: list[int], sampling: dict, prompt_param: str, first_index: int = 0
) -> list[Choice]:
    n = sampling.get("n", 1)
    choices = [Choice(first_index + i) for i in range(n)]
    outputs = stream_choices(client, prompt_ids, sampling, prompt_param, first_index, stream=False)
    async with contextlib.aclosing(outputs) as stream:
        async for index, output in stream:
            choices[index - first_index].add(output)
    return choices
