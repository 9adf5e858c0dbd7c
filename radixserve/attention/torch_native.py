"""The reference attention backend: plain PyTorch SDPA over K/V gathered from the paged pool.

Every sequence reads its whole context from the pool by slot id, so a prefix hit, a chunked-prefill
continuation, an extend and a decode are the same computation and mix freely in one batch.

Per step, ``prepare`` splits the batch in two groups and builds their indices once:

* decodes (``extend_len == 1``): one padded SDPA call per layer over ``[B, max_len]`` gathered
  slots, padding pointing at the dummy slot 0 and masked out;
* extends (``extend_len > 1``): one SDPA call per sequence; query row ``j`` sits at position
  ``seq_len - extend_len + j`` and sees keys ``0..`` that position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radixserve.attention.base import AttentionBackend, ForwardBatch


@dataclass
class _DecodePlan:
    query_rows: torch.Tensor  # [B] int64, the query row of each decoding sequence
    slots: torch.Tensor  # [B, max_len] int64, context slots, padded with slot 0
    mask: torch.Tensor  # [B, 1, 1, max_len] bool, True where a key is real


@dataclass
class _ExtendPlan:
    query_start: int
    query_end: int
    slots: torch.Tensor  # [seq_len] int64
    mask: torch.Tensor | None  # [extend_len, seq_len] bool; None when the whole context is new (plain causal)


class TorchNativeBackend(AttentionBackend):
    def __init__(self, kv_pool):
        """``kv_pool``: a ``radixserve.runner.kv_pool.KVPool`` (not imported: runner/ depends on attention/)."""
        self.kv_pool = kv_pool
        self.compute_dtype = kv_pool.dtype
        self._decode: _DecodePlan | None = None
        self._extends: list[_ExtendPlan] = []

    def prepare(self, batch: ForwardBatch) -> None:
        qo_indptr = batch.qo_indptr.tolist()
        kv_indptr = batch.kv_indptr.tolist()
        decode_ids = [i for i, n in enumerate(batch.extend_lens) if n == 1]
        self._decode = self._plan_decode(batch, decode_ids, qo_indptr, kv_indptr) if decode_ids else None
        self._extends = [
            self._plan_extend(batch, i, qo_indptr, kv_indptr) for i, n in enumerate(batch.extend_lens) if n > 1
        ]

    def _plan_decode(
        self, batch: ForwardBatch, ids: list[int], qo_indptr: list[int], kv_indptr: list[int]
    ) -> _DecodePlan:
        device = batch.kv_slots.device
        lens = torch.tensor([batch.seq_lens[i] for i in ids], dtype=torch.int64, device=device)  # [B]
        starts = torch.tensor([kv_indptr[i] for i in ids], dtype=torch.int64, device=device)  # [B]
        max_len = max(batch.seq_lens[i] for i in ids)
        offsets = torch.arange(max_len, dtype=torch.int64, device=device)  # [max_len]
        valid = offsets[None, :] < lens[:, None]  # [B, max_len]
        flat = (starts[:, None] + offsets[None, :]).clamp(max=batch.kv_slots.numel() - 1)
        slots = batch.kv_slots[flat].masked_fill(~valid, 0)  # [B, max_len]
        rows = torch.tensor([qo_indptr[i] for i in ids], dtype=torch.int64, device=device)
        return _DecodePlan(query_rows=rows, slots=slots, mask=valid[:, None, None, :])

    def _plan_extend(self, batch: ForwardBatch, i: int, qo_indptr: list[int], kv_indptr: list[int]) -> _ExtendPlan:
        seq_len, extend_len = batch.seq_lens[i], batch.extend_lens[i]
        slots = batch.kv_slots[kv_indptr[i] : kv_indptr[i + 1]]
        mask = None
        if extend_len != seq_len:
            device = slots.device
            query_pos = torch.arange(seq_len - extend_len, seq_len, device=device)  # [extend_len]
            mask = torch.arange(seq_len, device=device)[None, :] <= query_pos[:, None]  # [extend_len, seq_len]
        return _ExtendPlan(qo_indptr[i], qo_indptr[i + 1], slots, mask)

    def forward(
        self,
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer_id: int,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim]
        self.kv_pool.write(layer_id, batch.out_slots, k, v)
        k_pool, v_pool = self.kv_pool.get(layer_id)  # [num_slots, Hkv, D] each
        q_compute = q.to(self.compute_dtype)
        if not self._extends and batch.is_decode:  # decode rows are exactly 0..B-1: no scatter needed
            return self._attend_decode(q_compute, k_pool, v_pool, scale).to(q.dtype)
        out = torch.empty_like(q_compute)
        if self._decode is not None:
            out[self._decode.query_rows] = self._attend_decode(q_compute, k_pool, v_pool, scale)
        for plan in self._extends:
            out[plan.query_start : plan.query_end] = self._attend_extend(plan, q_compute, k_pool, v_pool, scale)
        return out.to(q.dtype)

    def _attend_decode(
        self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, scale: float
    ) -> torch.Tensor:  # [B, Hq, D]
        plan = self._decode
        q_batch = q[plan.query_rows].unsqueeze(2)  # [B, Hq, 1, D]
        k_batch = k_pool[plan.slots].transpose(1, 2)  # [B, Hkv, max_len, D]
        v_batch = v_pool[plan.slots].transpose(1, 2)  # [B, Hkv, max_len, D]
        out = _sdpa(q_batch, k_batch, v_batch, plan.mask, scale, is_causal=False)  # [B, Hq, 1, D]
        return out.squeeze(2)

    def _attend_extend(
        self, plan: _ExtendPlan, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, scale: float
    ) -> torch.Tensor:  # [extend_len, Hq, D]
        q_seq = q[plan.query_start : plan.query_end].transpose(0, 1).unsqueeze(0)  # [1, Hq, extend_len, D]
        k_seq = k_pool[plan.slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, seq_len, D]
        v_seq = v_pool[plan.slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, seq_len, D]
        out = _sdpa(q_seq, k_seq, v_seq, plan.mask, scale, is_causal=plan.mask is None)  # [1, Hq, extend_len, D]
        return out[0].transpose(0, 1)


def _sdpa(
    q: torch.Tensor,  # [B, Hq, Lq, D]
    k: torch.Tensor,  # [B, Hkv, Lk, D]
    v: torch.Tensor,  # [B, Hkv, Lk, D]
    mask: torch.Tensor | None,  # broadcastable to [B, Hq, Lq, Lk], True = attend
    scale: float,
    is_causal: bool,
) -> torch.Tensor:  # [B, Hq, Lq, D]
    enable_gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )
