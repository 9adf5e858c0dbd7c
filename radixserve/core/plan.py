"""StepPlan / StepResult: the only contract between the scheduler and the runner.

Everything here is plain Python ints and lists so the scheduler never touches a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixserve.core.sampling_params import SamplingParams

# Input id of a position whose token a launched step samples but the host does not know yet. Only
# the last input of a sequence can be one; the runner fills it in on the device from the previous
# step's sampled ids (overlap schedule), so a placeholder never reaches the model.
FUTURE_TOKEN = -1


@dataclass
class SequencePlan:
    """One sequence's share of a forward step.

    The KV layout of the sequence after this step is ``slots`` (one KV slot per position,
    ``len(slots) == prefix_len + len(input_ids)``). The first ``prefix_len`` positions already
    hold KV (a radix-tree hit or earlier chunks/decode steps); ``input_ids`` are computed now and
    their K/V written to ``slots[prefix_len:]``.
    """

    request_id: str
    input_ids: list[int]
    prefix_len: int
    # The request's own list (not a copy): read it during this step only.
    slots: list[int]
    # Produce a next token from the last input position. False for a non-final prefill chunk.
    sample: bool
    sampling: SamplingParams
    # History for penalties (read-only for the runner). ``output_ids`` holds resolved tokens only:
    # with the overlap schedule the newest ones may still be in flight (see ``num_output``).
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    # Tokens the request generated before this one, resolved or in flight (seeds, min_new_tokens).
    # None means ``len(output_ids)``.
    num_output: int | None = None
    # Tokens that end generation (EOS + stop_token_ids); masked while below min_new_tokens.
    stop_token_ids: tuple[int, ...] = ()
    # ``Request.slots_version``: changes when ``slots[:prefix_len]`` may differ from the last step's.
    slots_version: int = 0

    @property
    def seq_len(self) -> int:
        return self.prefix_len + len(self.input_ids)


@dataclass
class StepPlan:
    sequences: list[SequencePlan]

    @property
    def num_tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.sequences)

    def __bool__(self) -> bool:
        return bool(self.sequences)


@dataclass
class SequenceResult:
    """Result for a sequence whose plan had ``sample=True``."""

    request_id: str
    token_id: int
    logprob: float | None = None
    # [(token_id, logprob)] best first, when top_logprobs_num > 0.
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class StepResult:
    results: dict[str, SequenceResult]
    num_tokens_computed: int = 0
