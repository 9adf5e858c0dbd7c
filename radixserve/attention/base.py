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

    @property
    def num_leading_decodes(self) -> int:
        """How many sequences at the start of the batch have one new token (the scheduler puts a
        mixed step's decodes before its prefill chunks)."""
        count = 0
        for n in self.extend_lens:
            if n != 1:
                break
            count += 1
        return count

    def head(self, count: int) -> ForwardBatch:
        """The first ``count`` sequences as a batch of their own: views of this batch's tensors (its
        indptrs start at 0 already; ``kv_slots`` keeps its full length, read through ``kv_indptr``)."""
        num_tokens = sum(self.extend_lens[:count])
        return ForwardBatch(
            input_ids=self.input_ids[:num_tokens],
            positions=self.positions[:num_tokens],
            out_slots=self.out_slots[:num_tokens],
            qo_indptr=self.qo_indptr[: count + 1],
            kv_indptr=self.kv_indptr[: count + 1],
            kv_slots=self.kv_slots,
            seq_lens=self.seq_lens[:count],
            extend_lens=self.extend_lens[:count],
            logits_indices=self.logits_indices[:0],
            attn_backend=self.attn_backend,
            seq_slots=None if self.seq_slots is None else self.seq_slots[:count],
            seq_keys=None if self.seq_keys is None else self.seq_keys[:count],
            seq_versions=None if self.seq_versions is None else self.seq_versions[:count],
        )


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

    def kv_target(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pool buffers ``(k_pool, v_pool)`` (``[num_slots, Hkv, D]``) into which this step's
        ``forward`` of layer ``layer_id`` would write the new K/V at ``batch.out_slots``, when the
        caller may write them itself (the model does, fused with RoPE) and then passes
        ``kv_stored=True``; None: ``forward`` always stores them."""
        return None

    def forward(
        self,
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer_id: int,
        batch: ForwardBatch,
        scale: float,
        kv_stored: bool = False,  # the caller already wrote k and v into ``kv_target``'s buffers
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim]
        raise NotImplementedError
