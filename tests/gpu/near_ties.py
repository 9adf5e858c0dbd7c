"""Greedy outputs of two runs compared through the reference's logits: where they first depart,
was the reference's choice a near-tie that float rounding may flip, or a clear one?"""

from __future__ import annotations

from collections.abc import Sequence


def departures(
    reference: list[dict], got: list[dict], near_tie: float, labels: Sequence | None = None
) -> tuple[int, list[str]]:
    """Outputs of ``Engine.generate(..., return_logprob=True, top_logprobs_num=k)``, one per prompt.
    Returns how many are token-identical, and a message for each that first departs where the run's
    token is ``near_tie`` nats or more below the reference's choice (or outside its top k). After
    the first departure the contexts differ, so nothing later is compared."""
    identical, wrong = 0, []
    for number, (want, have) in enumerate(zip(reference, got)):
        want_ids, have_ids = want["output_ids"], have["output_ids"]
        if want_ids == have_ids:
            identical += 1
            continue
        at = next((i for i, (a, b) in enumerate(zip(want_ids, have_ids)) if a != b), None)
        label = labels[number] if labels is not None else f"#{number}"
        if at is None:
            wrong.append(f"{label}: {len(have_ids)} tokens where the reference has {len(want_ids)}")
            continue
        top = dict(want["meta_info"]["output_top_logprobs"][at])
        gap = top[want_ids[at]] - top.get(have_ids[at], float("-inf"))
        if gap >= near_tie:
            wrong.append(f"{label}: step {at}: {have_ids[at]} is {gap:.3f} nats below {want_ids[at]} {top}")
    return identical, wrong
