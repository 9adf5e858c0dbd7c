"""The reference attention backend: plain PyTorch SDPA over K/V gathered from the paged pool.

Every sequence reads its whole context from the pool by slot id, so a prefix hit, a chunked-prefill
continuation, an extend and a decode are the same computation and mix freely in one batch.

Per step, ``prepare`` splits the batch in two groups and builds their indices once:

* decodes (``extend_len == 1``): one padded attention over each sequence's own slots, plus, for
  groups of sequences whose contexts start with the same slots (a shared radix-tree prefix), one
  attention over that shared prefix for the whole group, merged by log-sum-exp. The shared K/V is
  gathered and read once per group instead of once per sequence;
* extends (``extend_len > 1``): one SDPA call per sequence; query row ``j`` sits at position
  ``seq_len - extend_len + j`` and sees keys ``0..`` that position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radixserve.attention.base import AttentionBackend, ForwardBatch

# A shared leading run of slots this long (tokens) across >= 2 decoding sequences is read once.
MIN_SHARED_PREFIX = 32


@dataclass
class _SharedGroup:
    members: torch.Tensor  # [G] int64, indices into the decode batch
    slots: torch.Tensor  # [shared_len] int64, the common leading slots


@dataclass
class _DecodePlan:
    query_rows: torch.Tensor  # [B] int64, the query row of each decoding sequence
    slots: torch.Tensor  # [B, max_own] int64, each sequence's slots after its shared prefix, padded with 0
    valid: torch.Tensor  # [B, max_own] bool, True where a key is real
    groups: list[_SharedGroup]


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
        full = _padded(batch.kv_slots, starts, lens)  # [B, max_len]
        groups, shared_lens = _shared_groups(full, lens)
        own = _padded(batch.kv_slots, starts + shared_lens, lens - shared_lens)  # [B, max_own]
        valid = torch.arange(own.shape[1], device=device)[None, :] < (lens - shared_lens)[:, None]
        rows = torch.tensor([qo_indptr[i] for i in ids], dtype=torch.int64, device=device)
        return _DecodePlan(query_rows=rows, slots=own, valid=valid, groups=groups)

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
        kv_stored: bool = False,
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim]
        if not kv_stored:  # (never stored by the caller: no ``kv_target`` here)
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
        q_batch = q if q.shape[0] == plan.query_rows.numel() else q[plan.query_rows]  # [B, Hq, D]
        out, lse = _attend_own(q_batch, k_pool[plan.slots], v_pool[plan.slots], plan.valid, scale)
        for group in plan.groups:
            everyone = group.members.numel() == q_batch.shape[0]  # members are sorted: the whole batch
            members = slice(None) if everyone else group.members
            shared_out, shared_lse = _attend_shared(q_batch[members], k_pool[group.slots], v_pool[group.slots], scale)
            merged = _merge(out[members], lse[members], shared_out, shared_lse)
            if everyone:
                out = merged
            else:
                out[members] = merged
        return out

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


def _padded(flat: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Rows ``flat[starts[b] : starts[b] + lens[b]]`` padded with slot 0 into ``[B, max(lens)]``."""
    width = int(lens.max()) if lens.numel() else 0
    offsets = torch.arange(width, dtype=torch.int64, device=flat.device)  # [width]
    valid = offsets[None, :] < lens[:, None]  # [B, width]
    index = (starts[:, None] + offsets[None, :]).clamp(max=max(flat.numel() - 1, 0))
    return flat[index].masked_fill(~valid, 0)


def _shared_groups(slots: torch.Tensor, lens: torch.Tensor) -> tuple[list[_SharedGroup], torch.Tensor]:
    """Groups of sequences (by first slot) whose contexts begin with the same >= MIN_SHARED_PREFIX slots.

    Returns the groups and, per sequence, how many leading slots its group reads as shared (0 if none).
    The shared run is capped at ``len - 1`` so every sequence keeps at least its newest key as its own.
    """
    shared_lens = torch.zeros_like(lens)
    groups: list[_SharedGroup] = []
    firsts, inverse = torch.unique(slots[:, 0], return_inverse=True)
    for g in range(firsts.numel()):
        members = (inverse == g).nonzero().flatten()
        if members.numel() < 2:
            continue
        rows = slots[members]  # [G, max_len]
        same = (rows == rows[:1]).to(torch.int32).cumprod(dim=1).sum(dim=1)  # [G] common run with row 0
        common = int(torch.minimum(same, lens[members] - 1).min())
        if common >= MIN_SHARED_PREFIX:
            groups.append(_SharedGroup(members, rows[0, :common].clone()))
            shared_lens[members] = common
    return groups, shared_lens


def _attend_own(
    q: torch.Tensor,  # [B, Hq, D]
    k: torch.Tensor,  # [B, L, Hkv, D]
    v: torch.Tensor,  # [B, L, Hkv, D]
    valid: torch.Tensor,  # [B, L] bool
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # out [B, Hq, D], log-sum-exp [B, Hq]
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    q_grouped = q.view(batch, num_kv_heads, num_q_heads // num_kv_heads, head_dim)  # [B, Hkv, G, D]
    scores = torch.matmul(q_grouped * scale, k.permute(0, 2, 3, 1))  # [B, Hkv, G, L]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    out, lse = _softmax_times_values(scores, v.permute(0, 2, 1, 3))  # [B, Hkv, G, D], [B, Hkv, G]
    return out.reshape(batch, num_q_heads, head_dim), lse.reshape(batch, num_q_heads)


def _attend_shared(
    q: torch.Tensor,  # [G, Hq, D], the group's queries
    k: torch.Tensor,  # [S, Hkv, D], the shared prefix
    v: torch.Tensor,  # [S, Hkv, D]
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # out [G, Hq, D], log-sum-exp [G, Hq]
    members, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_q_heads // num_kv_heads
    # every query of every member against one copy of the prefix: [Hkv, G * group, D]
    q_heads = q.view(members, num_kv_heads, group, head_dim).permute(1, 0, 2, 3).reshape(num_kv_heads, -1, head_dim)
    scores = torch.matmul(q_heads * scale, k.permute(1, 2, 0))  # [Hkv, G * group, S]
    out, lse = _softmax_times_values(scores, v.permute(1, 0, 2))  # [Hkv, G * group, D], [Hkv, G * group]
    out = out.view(num_kv_heads, members, group, head_dim).permute(1, 0, 2, 3).reshape(members, num_q_heads, head_dim)
    lse = lse.view(num_kv_heads, members, group).permute(1, 0, 2).reshape(members, num_q_heads)
    return out, lse


def _softmax_times_values(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scores) @ values`` and the log-sum-exp of ``scores`` (last dim), in one exp pass.

    Every row has at least one finite score (a sequence always owns its newest key).
    """
    top = scores.amax(dim=-1, keepdim=True)
    weights = scores.sub_(top).exp_()  # in place: scores are not needed again
    total = weights.sum(dim=-1, keepdim=True)
    out = torch.matmul(weights, values) / total
    return out, (top + total.log()).squeeze(-1)


def _merge(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> torch.Tensor:  # attention over the union of two disjoint key sets, from each part's output and LSE
    top = torch.maximum(lse_a, lse_b)
    weight_a, weight_b = torch.exp(lse_a - top), torch.exp(lse_b - top)  # [B, Hq]
    total = weight_a + weight_b
    return (out_a * (weight_a / total)[..., None]) + (out_b * (weight_b / total)[..., None])
