"""A generation request: its tokens, its KV ownership counters and exactly one finish reason.

KV accounting (page size 1), for a request in the running set::

    slots[:num_tree_slots]              locked in the radix tree (shared, read-only)
    slots[num_tree_slots:num_computed]  private to this request (freed or inserted on release)
    len(slots) == num_computed          tokens whose K/V is in the pool

``all_ids = prompt_ids + output_ids`` holds resolved tokens. The last sampled token never has K/V
yet, so a running request always has ``num_computed < num_tokens``; the next step computes
positions ``num_computed : num_computed + chunk``. Prefill, chunked prefill, decode and a
re-prefill after retraction are the same operation.

Overlap schedule: step N+1 is planned before step N's tokens reach the host. ``num_inflight``
counts tokens sampled by launched-but-unresolved steps (ids unknown to the host). They count in
``num_tokens``, so a request with one in flight is a decode candidate whose input is
``FUTURE_TOKEN``; ``all_ids``/``output_ids`` hold resolved tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixserve.core.plan import FUTURE_TOKEN
from radixserve.core.sampling_params import SamplingParams


@dataclass(frozen=True)
class FinishReason:
    kind: str  # "stop" | "length" | "abort" | "error"
    matched: int | str | None = None  # the stop token id or stop string that ended generation
    message: str | None = None  # for "abort" / "error"
    param: str | None = None  # for "error": the request parameter at fault

    def to_dict(self) -> dict:
        out: dict = {"type": self.kind}
        if self.matched is not None:
            out["matched"] = self.matched
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    extra_key: str | None = None  # cache namespace (tenant / adapter); never shares nodes across keys
    stop_token_ids: tuple[int, ...] = ()  # EOS ids (unless ignore_eos) + sampling.stop_token_ids
    arrival_step: int = 0
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float | None] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    # KV state, owned by the scheduler's PrefixCache.
    slots: list[int] = field(default_factory=list)
    # Bumped whenever ``slots`` changes other than by appending (dedup swap, truncate, release), so a
    # device-side copy of the slot list knows when it must be rewritten rather than extended.
    slots_version: int = 0
    num_tree_slots: int = 0
    cache_node: object = None
    # The PrefixCache's last answer to "how much of this request is cached" while it waits (a
    # radix_tree.MatchHint): the next lookup resumes from it instead of walking the whole prompt.
    prefix_hint: object = None
    # Tokens sampled by launched steps the host has not resolved yet (owned by the scheduler).
    num_inflight: int = 0
    # Reporting.
    num_cached_tokens: int = 0  # prompt tokens served from the cache at first admission
    num_retractions: int = 0
    admitted: bool = False
    grammar: object = None  # the request's grammar matcher (engine-owned), when output is constrained
    # Text deltas at every step (a streaming client); False: the whole text once, in the finishing
    # output (nothing reads it before), which spares a detokenizer call per request per step.
    stream_text: bool = True
    finish_reason: FinishReason | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def ids_to_read(self) -> list[int]:
        """``all_ids`` without the copy while there is no output yet (a waiting prompt): read only."""
        return self.all_ids if self.output_ids else self.prompt_ids

    def ids_between(self, start: int, end: int) -> list[int]:
        """Token ids of positions ``start:end`` without building ``all_ids``; ``FUTURE_TOKEN`` for
        positions past the resolved tokens (sampled by a step still in flight)."""
        num_prompt = len(self.prompt_ids)
        num_resolved = num_prompt + len(self.output_ids)
        if end > num_resolved:
            return self.ids_between(start, num_resolved) + [FUTURE_TOKEN] * (end - max(start, num_resolved))
        if start >= num_prompt:
            return self.output_ids[start - num_prompt : end - num_prompt]
        if end <= num_prompt:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - num_prompt]

    @property
    def num_tokens(self) -> int:
        """Prompt + resolved output + in-flight tokens."""
        return len(self.prompt_ids) + len(self.output_ids) + self.num_inflight

    @property
    def num_output(self) -> int:
        """Tokens generated so far, resolved or in flight."""
        return len(self.output_ids) + self.num_inflight

    @property
    def num_computed(self) -> int:
        return len(self.slots)

    @property
    def num_pending(self) -> int:
        """Tokens that must be computed before the next token can be sampled."""
        return self.num_tokens - self.num_computed

    @property
    def num_private_slots(self) -> int:
        return len(self.slots) - self.num_tree_slots

    @property
    def remaining_new_tokens(self) -> int:
        """Tokens still to be sampled: neither resolved nor in flight."""
        return max(0, self.sampling.max_new_tokens - self.num_output)

    @property
    def awaiting_resolution(self) -> bool:
        """Every token it may generate is sampled; only in-flight results are missing (never plan it)."""
        return self.num_inflight > 0 and self.remaining_new_tokens == 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
