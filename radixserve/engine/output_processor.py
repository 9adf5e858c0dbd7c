"""Per-request incremental detokenization and stop-string matching, run after every step."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixserve.core.request import FinishReason, Request
from radixserve.tokenizer.detokenizer import IncrementalDetokenizer
from radixserve.tokenizer.stop_strings import StopStringMatcher
from radixserve.tokenizer.tokenizer import Tokenizer


@dataclass(slots=True)
class RequestOutput:
    """What a step produced for one request: the new tokens and text since the last output."""

    request_id: str
    new_token_ids: list[int]
    text_delta: str
    new_logprobs: list[float | None] = field(default_factory=list)
    new_top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class _RequestStream:
    def __init__(self, tokenizer: Tokenizer, request: Request):
        params = request.sampling
        self.detokenizer = IncrementalDetokenizer(
            tokenizer,
            prompt_ids=request.prompt_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        self.matcher = StopStringMatcher(params.stop, params.no_stop_trim) if params.stop else None
        self.num_sent = 0  # output tokens already reported
        self.num_decoded = 0  # output tokens fed to the detokenizer
        # stop strings are matched in the text as it grows: those requests decode every step
        self.incremental = request.stream_text or self.matcher is not None


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.streams: dict[str, _RequestStream] = {}

    def add(self, request: Request) -> None:
        self.streams[request.request_id] = _RequestStream(self.tokenizer, request)

    def process(self, request: Request) -> tuple[RequestOutput, str | None]:
        """Detokenize the request's new tokens. Returns the output and the stop string that matched, if any.

        The caller finishes the request when a stop string matched; the output already carries
        ``finish_reason`` then. A request without ``stream_text`` (and without stop strings) gets
        its whole text in its finishing output and empty deltas before: the same text, decoded once.
        """
        stream = self.streams[request.request_id]
        output_ids = request.output_ids
        first = stream.num_sent
        new_ids = output_ids[first:]
        stream.num_sent = len(output_ids)
        ending = request.finish_reason is not None
        if not (stream.incremental or ending):  # text whole at the end: nothing to decode or match yet
            return self._output(request, new_ids, "", first, None), None
        undecoded = output_ids[stream.num_decoded :]
        stream.num_decoded = len(output_ids)
        text = stream.detokenizer.step(undecoded) if undecoded else ""
        if ending:
            text += stream.detokenizer.flush()
        matched = None
        if stream.matcher is not None:
            check = stream.matcher.feed(text) if text else None
            text, matched = (check.emit, check.matched) if check is not None else ("", None)
            if ending and matched is None:
                text += stream.matcher.flush()
        reason = FinishReason("stop", matched=matched) if matched is not None else request.finish_reason
        if reason is not None:
            del self.streams[request.request_id]
        return self._output(request, new_ids, text, first, reason), matched

    @staticmethod
    def _output(
        request: Request, new_ids: list[int], text: str, first: int, reason: FinishReason | None
    ) -> RequestOutput:
        return RequestOutput(
            request.request_id,
            new_ids,
            text,
            request.output_logprobs[first:],
            request.output_top_logprobs[first:],
            reason,
            len(request.prompt_ids),
            request.num_cached_tokens,
            len(request.output_ids),
        )

    def drop(self, request_id: str) -> None:
        self.streams.pop(request_id, None)
