"""Turns a ``StepPlan`` (plain ints) into device tensors, runs the model and samples.

The runner owns every device tensor: the KV pool, the step's input tensors, the sampler state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from radixserve.attention.base import AttentionBackend, ForwardBatch
from radixserve.core.plan import SequenceResult, StepPlan, StepResult
from radixserve.runner.kv_pool import KVPool
from radixserve.runner.sampler import Sampler, SamplingRow


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        kv_pool: KVPool,
        backend: AttentionBackend,
        sampler: Sampler,
        num_real_tokens: int | None = None,
    ):
        """``num_real_tokens``: the tokenizer's vocabulary; lm_head rows past it (padding) are never sampled."""
        self.model = model
        self.num_real_tokens = num_real_tokens
        self.kv_pool = kv_pool
        self.backend = backend
        self.sampler = sampler
        self.device = kv_pool.device

    @torch.inference_mode()
    def execute(self, plan: StepPlan, vocab_mask: Callable[[], torch.Tensor] | None = None) -> StepResult:
        """Run one step. ``vocab_mask``, when given, is called after the forward pass (so the caller can
        fill it concurrently) and returns the allowed tokens ``[num_sampled, vocab]`` (bool)."""
        batch = self.build_batch(plan)
        self.backend.prepare(batch)
        logits = self.model(batch)  # [num_sampled, vocab] float32
        if self.num_real_tokens is not None and self.num_real_tokens < logits.shape[1]:
            logits[:, self.num_real_tokens :] = float("-inf")
        sampled = [seq for seq in plan.sequences if seq.sample]
        results: dict[str, SequenceResult] = {}
        if sampled:
            rows = [SamplingRow(s.sampling, s.prompt_ids, s.output_ids, s.stop_token_ids) for s in sampled]
            mask = vocab_mask() if vocab_mask is not None else None
            out = self.sampler.sample(logits, rows, mask.to(logits.device) if mask is not None else None)
            for i, seq in enumerate(sampled):
                results[seq.request_id] = SequenceResult(
                    seq.request_id, out.token_ids[i], out.logprobs[i], out.top_logprobs[i]
                )
        return StepResult(results, num_tokens_computed=plan.num_tokens)

    def build_batch(self, plan: StepPlan) -> ForwardBatch:
        input_ids: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        kv_slots: list[int] = []
        qo_indptr, kv_indptr, logits_indices = [0], [0], []
        for seq in plan.sequences:
            num_new = len(seq.input_ids)
            input_ids.extend(seq.input_ids)
            positions.extend(range(seq.prefix_len, seq.prefix_len + num_new))
            out_slots.extend(seq.slots[seq.prefix_len : seq.prefix_len + num_new])
            kv_slots.extend(seq.slots[: seq.prefix_len + num_new])
            qo_indptr.append(qo_indptr[-1] + num_new)
            kv_indptr.append(kv_indptr[-1] + seq.prefix_len + num_new)
            if seq.sample:
                logits_indices.append(qo_indptr[-1] - 1)
        return ForwardBatch(
            input_ids=self._tensor(input_ids),
            positions=self._tensor(positions),
            out_slots=self._tensor(out_slots),
            qo_indptr=self._tensor(qo_indptr),
            kv_indptr=self._tensor(kv_indptr),
            kv_slots=self._tensor(kv_slots),
            seq_lens=[s.prefix_len + len(s.input_ids) for s in plan.sequences],
            extend_lens=[len(s.input_ids) for s in plan.sequences],
            logits_indices=self._tensor(logits_indices),
            attn_backend=self.backend,
        )

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)
