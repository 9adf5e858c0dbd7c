"""Helpers for model tests: hand-built ``ForwardBatch`` steps over explicit KV slot lists.

The real runner (radixserve/runner/) turns a StepPlan into a ForwardBatch; these tests drive the
model directly so each scenario (prefix hit, chunked prefill, decode) is spelled out slot by slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixserve.attention.base import ForwardBatch
from radixserve.attention.torch_native import TorchNativeBackend
from radixserve.runner.kv_pool import KVPool


@dataclass
class Chunk:
    """One sequence's part of a step: ``new_ids`` are computed now, at the last ``len(new_ids)`` of ``slots``."""

    new_ids: list[int]
    slots: list[int]  # the whole context after this step, oldest first

    @property
    def seq_len(self) -> int:
        return len(self.slots)


def make_backend(config, num_slots: int = 256, dtype: torch.dtype = torch.float32) -> TorchNativeBackend:
    pool = KVPool(num_slots, config.num_layers, config.num_kv_heads, config.head_dim, dtype)
    return TorchNativeBackend(pool)


def make_batch(chunks: list[Chunk], backend, all_logits: bool = False) -> ForwardBatch:
    """A prepared step over ``chunks``; logits for every new token, or for each chunk's last one."""
    input_ids, positions, out_slots, kv_slots, logits_rows = [], [], [], [], []
    qo_indptr, kv_indptr = [0], [0]
    for chunk in chunks:
        extend_len = len(chunk.new_ids)
        start = chunk.seq_len - extend_len
        input_ids += chunk.new_ids
        positions += range(start, chunk.seq_len)
        out_slots += chunk.slots[start:]
        kv_slots += chunk.slots
        qo_indptr.append(qo_indptr[-1] + extend_len)
        kv_indptr.append(kv_indptr[-1] + chunk.seq_len)
        rows = range(qo_indptr[-2], qo_indptr[-1]) if all_logits else [qo_indptr[-1] - 1]
        logits_rows += rows
    batch = ForwardBatch(
        input_ids=_long(input_ids),
        positions=_long(positions),
        out_slots=_long(out_slots),
        qo_indptr=_long(qo_indptr),
        kv_indptr=_long(kv_indptr),
        kv_slots=_long(kv_slots),
        seq_lens=[chunk.seq_len for chunk in chunks],
        extend_lens=[len(chunk.new_ids) for chunk in chunks],
        logits_indices=_long(logits_rows),
        attn_backend=backend,
    )
    backend.prepare(batch)
    return batch


def _long(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


def greedy_generate(model, backend, prompt: list[int], slots: list[int], max_new_tokens: int, eos_ids=()) -> list[int]:
    """Prefill ``prompt`` at ``slots[:len(prompt)]``, then decode one token per step into the next slots."""
    logits = model(make_batch([Chunk(prompt, slots[: len(prompt)])], backend))
    output: list[int] = []
    while True:
        token = int(logits[-1].argmax())
        output.append(token)
        if token in eos_ids or len(output) == max_new_tokens:
            return output
        context_len = len(prompt) + len(output)
        logits = model(make_batch([Chunk([token], slots[:context_len])], backend))


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())
