"""Turns a ``StepPlan`` (plain ints) into device tensors, runs the model and samples.

The runner owns every device tensor: the KV pool, the step's input tensors, the sampler state.

Overlap schedule: a step may be launched before the previous one's tokens reach the host. A decode
whose input token is still in flight carries ``FUTURE_TOKEN``; ``build_batch`` replaces it on the
device with the token the last launched step sampled for that request (a gather, no host sync).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from radixserve.attention.base import AttentionBackend, ForwardBatch
from radixserve.attention.upload import upload_aligned
from radixserve.core.plan import FUTURE_TOKEN, SequenceResult, StepPlan, StepResult
from radixserve.runner.cuda_graph import DecodeGraphRunner
from radixserve.runner.kv_pool import KVPool
from radixserve.runner.piecewise_graph import PiecewiseGraphRunner
from radixserve.runner.sampler import PendingSample, Sampler, SamplingRow
from radixserve.runner.slot_table import SlotTable


class PendingStep:
    """A launched step; ``result()`` waits for its sampled tokens."""

    def __init__(self, plan: StepPlan, sampled: list, pending: PendingSample):
        self.plan, self.sampled, self.pending = plan, sampled, pending

    def result(self) -> StepResult:
        out = self.pending.result()
        results = {
            seq.request_id: SequenceResult(seq.request_id, out.token_ids[i], out.logprobs[i], out.top_logprobs[i])
            for i, seq in enumerate(self.sampled)
        }
        return StepResult(results, num_tokens_computed=self.plan.num_tokens)


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        kv_pool: KVPool,
        backend: AttentionBackend,
        sampler: Sampler,
        num_real_tokens: int | None = None,
        slot_table: SlotTable | None = None,
        graph_runner: DecodeGraphRunner | None = None,
        piecewise_runner: PiecewiseGraphRunner | None = None,
    ):
        """``num_real_tokens``: the tokenizer's vocabulary; lm_head rows past it (padding) are never sampled.

        ``slot_table``: where sequences' slot lists live on the device (built with room for 256
        sequences of the pool's size when not given). ``graph_runner``: replays captured decode steps.
        ``piecewise_runner``: replays the model around eager attention for the other steps it fits.
        """
        self.model = model
        self.num_real_tokens = num_real_tokens
        self.kv_pool = kv_pool
        self.backend = backend
        self.sampler = sampler
        self.device = kv_pool.device
        self.slot_table = slot_table or SlotTable(257, kv_pool.num_slots, kv_pool.device)
        self.graph_runner = graph_runner
        self.piecewise_runner = piecewise_runner
        # The last launched step's sampled ids [num_sampled] (on the device) and each request's row.
        self._last_token_ids: torch.Tensor | None = None
        self._last_rows: dict[str, int] = {}

    def execute(self, plan: StepPlan, vocab_mask: Callable[[], torch.Tensor] | None = None) -> StepResult:
        """Run one step. ``vocab_mask``, when given, is called after the forward pass (so the caller can
        fill it concurrently) and returns the allowed tokens ``[num_sampled, vocab]`` (bool)."""
        return self.launch(plan, vocab_mask).result()

    @torch.inference_mode()
    def launch(self, plan: StepPlan, vocab_mask: Callable[[], torch.Tensor] | None = None) -> PendingStep:
        """Queue one step on the device and return without waiting for it (CPU work can overlap)."""
        batch = self.build_batch(plan)
        logits = self.forward(batch)  # [num_sampled, vocab], the model's dtype
        if self.num_real_tokens is not None and self.num_real_tokens < logits.shape[1]:
            logits[:, self.num_real_tokens :] = float("-inf")
        sampled = [seq for seq in plan.sequences if seq.sample]
        rows = [SamplingRow.from_plan(seq) for seq in sampled]
        mask = vocab_mask() if vocab_mask is not None and sampled else None
        pending = self.sampler.sample_async(logits, rows, mask.to(logits.device) if mask is not None else None)
        self._last_token_ids = pending.token_ids
        self._last_rows = {seq.request_id: row for row, seq in enumerate(sampled)}
        return PendingStep(plan, sampled, pending)

    def _future_row(self, request_id: str) -> int:
        row = self._last_rows.get(request_id)
        if row is None or self._last_token_ids is None:
            raise RuntimeError(f"request {request_id!r} has an input in flight but the last step did not sample it")
        return row

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits ``[num_sampled, vocab]`` in the model's dtype (the sampler converts to float32 what it
        processes; an argmax needs no copy): a replayed decode graph when one fits, else the
        piecewise graphs around eager attention when they fit, else eager."""
        graph = self.graph_runner
        if graph is not None and graph.can_run(batch) and not self.backend.wants_eager(batch):
            return graph.replay(batch)
        self.backend.prepare(batch)
        pieces = self.piecewise_runner
        if pieces is not None and pieces.can_run(batch):
            return pieces.replay(batch)
        return self.model(batch, float32=False)

    def build_batch(self, plan: StepPlan) -> ForwardBatch:
        """One host-to-device upload of the step's small index tensors; ``kv_slots`` gathered on the device.

        ``FUTURE_TOKEN`` inputs are filled from the last launched step's sampled ids (see the module
        docstring); a request absent from that step is a scheduler bug and raises ``RuntimeError``.
        """
        sequences = plan.sequences
        rows = self.slot_table.sync(sequences)
        seq_lens = [seq.seq_len for seq in sequences]
        extend_lens = [len(seq.input_ids) for seq in sequences]
        input_ids: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        future_index: list[int] = []  # flat input positions of in-flight tokens
        future_rows: list[int] = []  # their rows in the last launched step's sampled ids
        for seq, seq_len in zip(sequences, seq_lens):
            input_ids.extend(seq.input_ids)
            if seq.input_ids[-1] == FUTURE_TOKEN:
                future_index.append(len(input_ids) - 1)
                future_rows.append(self._future_row(seq.request_id))
            positions.extend(range(seq.prefix_len, seq_len))
            out_slots.extend(seq.slots[seq.prefix_len : seq_len])
        qo_indptr = [0, *itertools.accumulate(extend_lens)]
        kv_indptr = [0, *itertools.accumulate(seq_lens)]
        logits_indices = [qo_indptr[i + 1] - 1 for i, seq in enumerate(sequences) if seq.sample]
        parts = (input_ids, positions, out_slots, qo_indptr, kv_indptr, logits_indices, rows, seq_lens)
        parts += (future_index, future_rows)
        device = upload_aligned(parts, self.device)
        ids_t, positions_t, out_slots_t, qo_indptr_t, kv_indptr_t, logits_t, rows_t, seq_lens_t = device[:8]
        if future_index:
            ids_t[device[8]] = self._last_token_ids[device[9]]
        kv_slots = self.slot_table.gather(rows_t, seq_lens_t, kv_indptr_t, kv_indptr[-1])
        return ForwardBatch(
            input_ids=ids_t,
            positions=positions_t,
            out_slots=out_slots_t,
            qo_indptr=qo_indptr_t,
            kv_indptr=kv_indptr_t,
            kv_slots=kv_slots,
            seq_lens=seq_lens,
            extend_lens=extend_lens,
            logits_indices=logits_t,
            attn_backend=self.backend,
            # which sequences share leading slots: the shared-prefix cascade of decode steps (and of
            # a mixed step's decodes, see FlashInferBackend's mixed_decode_split)
            seq_slots=[seq.slots for seq in sequences],
            seq_keys=[seq.request_id for seq in sequences],
            seq_versions=[seq.slots_version for seq in sequences],
        )
