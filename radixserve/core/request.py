"""A generation request: its tokens, its KV ownership counters and exactly one finish reason.

KV accounting (page size 1), for a request in the running set::

    slots[:num_tree_slots]              locked in the radix tree (shared, read-only)
    slots[num_tree_slots:num_computed]  private to this request (freed or inserted on release)
    len(slots) == num_computed          tokens whose K/V is in the pool

``all_ids = prompt_ids + output_ids``. The last sampled token never has K/V yet, so a running
request always has ``num_computed < len(all_ids)``; the next step computes
``all_ids[num_computed : num_computed + chunk]``. Prefill, chunked prefill, decode and a
re-prefill after retraction are the same operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # Reporting.
    num_cached_tokens: int = 0  # prompt tokens served from the cache at first admission
    num_retractions: int = 0
    admitted: bool = False
    grammar: object = None  # the request's grammar matcher (engine-owned), when output is constrained
    finish_reason: FinishReason | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def ids_between(self, start: int, end: int) -> list[int]:
        """``all_ids[start:end]`` without building ``all_ids``."""
        num_prompt = len(self.prompt_ids)
        if start >= num_prompt:
            return self.output_ids[start - num_prompt : end - num_prompt]
        if end <= num_prompt:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - num_prompt]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

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
        return max(0, self.sampling.max_new_tokens - len(self.output_ids))

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
