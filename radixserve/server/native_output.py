"""One sample's accumulated output, shaped as SGLang's ``/generate`` response entry.

``{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens", "completion_tokens",
"cached_tokens", ...}}``. With ``return_logprob``, ``meta_info`` adds ``output_token_logprobs``:
``[logprob, token_id, token_text or None]`` per output token (the stop token included, as in
``output_ids``), and, when ``top_logprobs_num > 0``, ``output_top_logprobs``: per output token a
list of such triples (or None). ``e2e_latency`` (seconds since the request arrived) appears once
the sample has finished.
"""

from __future__ import annotations

import time

from radixserve.engine.output_processor import RequestOutput
from radixserve.server.native_request import Sample


class SampleOutput:
    """Everything sample ``sample.index`` has produced so far.

    ``to_dict`` reflects the whole output so far: SGLang's streaming chunks (without
    ``--incremental-streaming-output``) carry the cumulative text and ids, not deltas.
    """

    def __init__(self, sample: Sample, tokenizer, text_in_logprobs: bool, arrived: float):
        self.sample = sample
        self.tokenizer = tokenizer
        self.text_in_logprobs = text_in_logprobs
        self.arrived = arrived  # time.perf_counter() when the HTTP request arrived
        self.text = ""
        self.output_ids: list[int] = []
        self.token_logprobs: list[tuple] = []
        self.top_logprobs: list[list[tuple] | None] = []
        self.last: RequestOutput | None = None
        self.e2e_latency: float | None = None

    def add(self, output: RequestOutput) -> None:
        self.text += output.text_delta
        self.output_ids.extend(output.new_token_ids)
        sampling = self.sample.sampling
        if sampling.get("return_logprob"):
            for token_id, logprob in zip(output.new_token_ids, output.new_logprobs):
                self.token_logprobs.append(self._triple(logprob, token_id))
        if sampling.get("return_logprob") and sampling.get("top_logprobs_num"):
            for top in output.new_top_logprobs:
                self.top_logprobs.append([self._triple(lp, t) for t, lp in top] if top else None)
        self.last = output
        if output.finished:
            self.e2e_latency = time.perf_counter() - self.arrived

    def _triple(self, logprob: float | None, token_id: int) -> tuple:
        text = self.tokenizer.decode([token_id]) if self.text_in_logprobs else None
        return (logprob, token_id, text)

    def to_dict(self) -> dict:
        """The response entry so far. Call after at least one ``add``."""
        last = self.last
        meta: dict = {
            "id": self.sample.request_id,
            "finish_reason": finish_reason_dict(last),
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": len(self.output_ids),
            "cached_tokens": last.cached_tokens,
        }
        sampling = self.sample.sampling
        if sampling.get("return_logprob"):
            meta["output_token_logprobs"] = self.token_logprobs
            if sampling.get("top_logprobs_num"):
                meta["output_top_logprobs"] = self.top_logprobs
        if self.e2e_latency is not None:
            meta["e2e_latency"] = self.e2e_latency
        return {"text": self.text, "output_ids": self.output_ids, "meta_info": meta}


def finish_reason_dict(output: RequestOutput) -> dict | None:
    """SGLang's shape: ``{"type": "stop", "matched": id or string}``, ``{"type": "length", "length": n}``,
    ``{"type": "abort", "message": ...}``; None while running."""
    reason = output.finish_reason
    if reason is None:
        return None
    out = reason.to_dict()
    if reason.kind == "length":
        out["length"] = output.completion_tokens
    return out
