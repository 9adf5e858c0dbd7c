"""Outputs of requests that do not stream, merged on their way out of the engine process.

A streaming client wants every step's tokens as they come; a non-streaming one reads its answer
once it is whole. Sending the latter one output per step costs pickling and a wake-up on both sides
of the pipe for nothing. ``OutputCoalescer`` passes through a held request's first output with
tokens (its time is the request's time to first token, which the server's metrics record), then
merges its outputs until the finishing one, which leaves with everything since.
"""

from __future__ import annotations

from radixserve.engine.output_processor import RequestOutput


class OutputCoalescer:
    def __init__(self) -> None:
        # request id -> outputs merged since the last one sent (None: nothing held; absent: not held)
        self._held: dict[str, RequestOutput | None] = {}
        self._first_sent: set[str] = set()

    def hold(self, request_id: str) -> None:
        """Merge this request's outputs after its first one with tokens, until it finishes."""
        self._held[request_id] = None

    def filter(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """The outputs to send now, in the order given."""
        sent = []
        for output in outputs:
            request_id = output.request_id
            if request_id not in self._held:
                sent.append(output)
                continue
            merged = self._held[request_id]
            if merged is not None:
                output = merge(merged, output)
            if output.finished or (request_id not in self._first_sent and output.new_token_ids):
                sent.append(output)
                self._first_sent.add(request_id)
                self._held[request_id] = None
                if output.finished:
                    del self._held[request_id]
                    self._first_sent.discard(request_id)
            else:
                self._held[request_id] = output
        return sent


def merge(earlier: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One output carrying ``earlier``'s then ``later``'s new tokens and text; the rest ``later``'s."""
    return RequestOutput(
        request_id=later.request_id,
        new_token_ids=earlier.new_token_ids + later.new_token_ids,
        text_delta=earlier.text_delta + later.text_delta,
        new_logprobs=earlier.new_logprobs + later.new_logprobs,
        new_top_logprobs=earlier.new_top_logprobs + later.new_top_logprobs,
        finish_reason=later.finish_reason,
        prompt_tokens=later.prompt_tokens,
        cached_tokens=later.cached_tokens,
        completion_tokens=later.completion_tokens,
    )
