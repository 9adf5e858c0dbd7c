"""Outputs of requests that do not stream, merged on their way out of the engine process.

A streaming client wants every step's tokens as they come; a non-streaming one reads its answer
once it is whole. Sending the latter one output per step costs pickling and a wake-up on both sides
of the pipe for nothing. ``OutputCoalescer`` passes through a held request's first output with
tokens (its time is the request's time to first token, which the server's metrics record), then
merges its outputs until the finishing one, which leaves with everything since.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixserve.engine.output_processor import RequestOutput


@dataclass
class _Held:
    """What a held request produced since its last output sent (appended to, never copied)."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    top_logprobs: list = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    first_sent: bool = False


class OutputCoalescer:
    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def hold(self, request_id: str) -> None:
        """Merge this request's outputs after its first one with tokens, until it finishes."""
        self._held[request_id] = _Held()

    def filter(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """The outputs to send now, in the order given. Costs O(new tokens) per held output."""
        sent = []
        for output in outputs:
            held = self._held.get(output.request_id)
            if held is None:
                sent.append(output)
                continue
            held.token_ids += output.new_token_ids
            held.logprobs += output.new_logprobs
            held.top_logprobs += output.new_top_logprobs
            held.text.append(output.text_delta)
            if not (output.finished or (not held.first_sent and held.token_ids)):
                continue
            sent.append(
                RequestOutput(
                    request_id=output.request_id,
                    new_token_ids=held.token_ids,
                    text_delta="".join(held.text),
                    new_logprobs=held.logprobs,
                    new_top_logprobs=held.top_logprobs,
                    finish_reason=output.finish_reason,
                    prompt_tokens=output.prompt_tokens,
                    cached_tokens=output.cached_tokens,
                    completion_tokens=output.completion_tokens,
                )
            )
            if output.finished:
                del self._held[output.request_id]
            else:
                self._held[output.request_id] = _Held(first_sent=True)
        return sent
