"""A token-level stand-in for the runner that really reads the KV slots it is given.

Every computed position writes its token id into ``store[slot]``; the next token is a hash of
the context *read back from the slots*. A scheduler that hands out a wrong, freed or
overwritten slot changes the context and therefore the output, so comparing against the same
request run alone catches KV bookkeeping bugs without a neural network.

Like the real runner, it fills a ``FUTURE_TOKEN`` input with the token the previously executed
step sampled for that request (the overlap schedule plans a decode before resolving its input).
"""

from __future__ import annotations

import zlib

from radixserve.core.plan import FUTURE_TOKEN, SequenceResult, StepPlan, StepResult

VOCAB = 50
POISON = -7  # what a failed step leaves in the slots it should have written


def next_token(context: list[int]) -> int:
    return zlib.crc32(bytes(str(context), "ascii")) % VOCAB


class KVOracle:
    def __init__(self):
        self.store: dict[int, int] = {}
        self.num_tokens_computed = 0
        self.last_sampled: dict[str, int] = {}  # the previous step's tokens, by request id

    def execute(self, plan: StepPlan, fail: bool = False) -> StepResult:
        """Run a step; ``fail`` models a step that dies on the device: its slots get garbage, not K/V."""
        results = {}
        for seq in plan.sequences:
            for offset, token in enumerate(seq.input_ids):
                if token == FUTURE_TOKEN:
                    assert offset == len(seq.input_ids) - 1, "only the last input can be in flight"
                    token = self.last_sampled[seq.request_id]
                self.store[seq.slots[seq.prefix_len + offset]] = POISON if fail else token
            context = [self.store[slot] for slot in seq.slots]
            self.num_tokens_computed += len(seq.input_ids)
            if seq.sample:
                results[seq.request_id] = SequenceResult(seq.request_id, next_token(context))
        self.last_sampled = {request_id: r.token_id for request_id, r in results.items()}
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
