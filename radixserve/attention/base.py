"""The attention backend interface and the per-step batch metadata it consumes.

Layout (FlashInfer's ragged/paged convention, page size 1): a step runs ``B`` sequences and
``T`` new tokens. Sequence ``i`` owns query rows ``qo_indptr[i]:qo_indptr[i+1]`` and KV slots
``kv_slots[kv_indptr[i]:kv_indptr[i+1]]`` covering its whole context *including* the new
tokens, whose K/V the backend writes to ``out_slots`` before attending.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_slots: torch.Tensor  # [T] int64, KV slot written for each new token
    qo_indptr: torch.Tensor  # [B + 1] int64
    kv_indptr: torch.Tensor  # [B + 1] int64
    kv_slots: torch.Tensor  # [sum(seq_lens)] int32 from the runner (backends accept int64 too)
    seq_lens: list[int]  # [B] context length after this step
    extend_lens: list[int]  # [B] new tokens this step
    logits_indices: torch.Tensor  # [num_sampled] rows of the hidden state to project to logits
    attn_backend: AttentionBackend | None = None
    # Optional host-side identity of each sequence's KV, for backends that exploit shared prefixes
    # (see attention/prefix_groups.py); None when the runner does not provide it.
    seq_slots: list[list[int]] | None = None  # [B] slots[:seq_len] of each sequence, read-only
    seq_keys: list[str] | None = None  # [B] a stable key per request (its request id)
    seq_versions: list[int] | None = None  # [B] changes whenever seq_slots[i] changes other than by appending

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.extend_lens)


class AttentionBackend:
    """Writes new K/V into the paged pool and computes causal attention over it.

    ``prepare`` is called once per step (plan, index building); ``forward`` once per layer.
    """

    def prepare(self, batch: ForwardBatch) -> None:
        raise NotImplementedError

    def warmup(self, num_q_heads: int) -> None:
        """Compile or load whatever kernels the backend JIT-builds, before the first request."""

    def wants_eager(self, batch: ForwardBatch) -> bool:
        """True when this step should run eagerly (``prepare`` + ``forward``) even though a captured
        CUDA graph could replay it, because the backend has a faster eager plan for it. Called by
        the runner before choosing; may plan ahead for the ``prepare`` of the same batch."""
        return False

    def forward(
        self,
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer_id: int,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim]
        raise NotImplementedError
