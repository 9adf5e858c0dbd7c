"""A token-level stand-in for the runner that really reads the KV slots it is given.

Every computed position writes its token id into ``store[slot]``; the next token is a hash of
the context *read back from the slots*. A scheduler that hands out a wrong, freed or
overwritten slot changes the context and therefore the output, so comparing against the same
request run alone catches KV bookkeeping bugs without a neural network.
"""

from __future__ import annotations

import zlib

from radixserve.core.plan import SequenceResult, StepPlan, StepResult

VOCAB = 50


def next_token(context: list[int]) -> int:
    return zlib.crc32(bytes(str(context), "ascii")) % VOCAB


class KVOracle:
    def __init__(self):
        self.store: dict[int, int] = {}
        self.num_tokens_computed = 0

    def execute(self, plan: StepPlan) -> StepResult:
        results = {}
        for seq in plan.sequences:
            for offset, token in enumerate(seq.input_ids):
                self.store[seq.slots[seq.prefix_len + offset]] = token
            context = [self.store[slot] for slot in seq.slots]
            self.num_tokens_computed += len(seq.input_ids)
            if seq.sample:
                results[seq.request_id] = SequenceResult(seq.request_id, next_token(context))
        return StepResult(results, plan.num_tokens)


def reference_output(prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
    context, out = list(prompt), []
    while len(out) < max_new_tokens:
        token = next_token(context)
        out.append(token)
        context.append(token)
        if token in stop_ids:
            break
    return out
