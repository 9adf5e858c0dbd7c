"""Plain-data contracts shared by the scheduler, the cache and the runner (stdlib only)."""

from radixserve.core.plan import SequencePlan, SequenceResult, StepPlan, StepResult
from radixserve.core.request import FinishReason, Request
from radixserve.core.sampling_params import SamplingParams

__all__ = [
    "FinishReason",
    "Request",
    "SamplingParams",
    "SequencePlan",
    "SequenceResult",
    "StepPlan",
    "StepResult",
]
