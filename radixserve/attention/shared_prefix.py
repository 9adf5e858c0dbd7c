"""Shared-prefix decode for any backend over the paged pool: when a step's shared prefixes pay,
and the cascade that reads each of them once per step (``triton_cascade.py``).

Requests under the same radix-tree node hold the same slot ids for that node's tokens, so a decode
step whose sequences start with the same slots can read that prefix once per group of requests
instead of once per request. ``prefix_groups`` finds the groups from the batch's slot lists
(``ForwardBatch.seq_slots``/``seq_keys``/``seq_versions``, set by the runner for every step; only
pure decode batches are planned, a mixed step's leading decodes through ``ForwardBatch.head``);
a cascade step is planned when the reads it saves per layer reach ``min_saved_bytes``. Cascade
steps run eagerly (their layout changes from step to step), so a backend reports them through
``AttentionBackend.wants_eager`` and the runner does not replay a CUDA graph for them.

Used by the triton backend and by the flashinfer backend (whose own decode kernels read every
context in full): both keep K/V in the same pool layout, page size 1.
"""

from __future__ import annotations

import torch

from radixserve.attention import triton_cascade
from radixserve.attention.base import ForwardBatch
from radixserve.attention.dummy_step import dummy_step
from radixserve.attention.launch_configs import MAX_SPLITS, decode_splits, pow2_floor, target_programs
from radixserve.attention.prefix_groups import MIN_SAVED_BYTES, MIN_SHARED_PREFIX, PrefixGrouper
from radixserve.attention.upload import upload_aligned

MIN_PREFIX_SPLIT_LEN = 256  # a split of a shared prefix reads at least this many keys


class SharedPrefixDecode:
    """Plans and runs cascade decode steps. ``plan(batch)`` may be asked twice for the same batch
    (``wants_eager`` then ``prepare``): the second call returns the first call's plan."""

    def __init__(
        self,
        kv_pool,
        num_q_heads: int | None,
        min_shared_prefix: int | None = None,
        min_saved_bytes: int | None = None,
    ):
        """Thresholds default to the module's ``MIN_SHARED_PREFIX`` and ``MIN_SAVED_BYTES`` (read
        when the planner is built)."""
        self.kv_pool = kv_pool
        self.num_kv_heads = kv_pool.num_kv_heads
        self.num_q_heads = num_q_heads  # None until known: no cascade before it is
        self.grouper = PrefixGrouper(MIN_SHARED_PREFIX if min_shared_prefix is None else min_shared_prefix)
        self.min_saved_bytes = MIN_SAVED_BYTES if min_saved_bytes is None else min_saved_bytes
        self.kv_row_bytes = 2 * kv_pool.num_kv_heads * kv_pool.head_dim * kv_pool.dtype.itemsize
        self.target_programs = target_programs(kv_pool.device)
        self._lookahead: tuple[ForwardBatch, triton_cascade.CascadePlan | None] | None = None

    def plan(self, batch: ForwardBatch) -> triton_cascade.CascadePlan | None:
        """The cascade layout of a pure decode batch whose shared prefixes pay, else None."""
        if self._lookahead is not None and self._lookahead[0] is batch:
            return self._lookahead[1]
        plan = None
        if (
            batch.seq_slots is not None
            and batch.seq_keys is not None
            and self.num_q_heads
            and batch.is_decode
            and _some_share_a_first_slot(batch.seq_slots)
        ):
            groups = self.grouper.group(batch.seq_slots, batch.seq_keys, batch.seq_lens, batch.seq_versions)
            if groups.groups and groups.num_saved_tokens * self.kv_row_bytes >= self.min_saved_bytes:
                plan = self._layout(batch, groups)
        self._lookahead = (batch, plan)
        return plan

    def take(self, batch: ForwardBatch) -> triton_cascade.CascadePlan | None:
        """``plan(batch)`` for the step about to run; forgets it for any later batch."""
        plan = self.plan(batch)
        self._lookahead = None
        return plan

    def forget(self) -> None:
        self._lookahead = None

    def _layout(self, batch: ForwardBatch, groups) -> triton_cascade.CascadePlan:
        """Tiles and shared lengths (one upload), then split counts: the own suffixes split like a
        plain decode; the prefix tiles until the usual program target, none shorter than
        ``MIN_PREFIX_SPLIT_LEN`` keys (at 64 tiles x 8 KV heads on an H200, with the tuned prefix
        launch, one split read the prefixes in 203-206 us and two in 214-219: ``python -m
        bench.cascade_kernels``)."""
        gqa_group = self.num_q_heads // self.num_kv_heads
        device = batch.kv_slots.device
        plan = triton_cascade.plan_cascade(groups, batch.seq_lens, gqa_group, self.kv_pool.head_dim, device)
        plan.num_suffix_splits = decode_splits(
            self.target_programs, batch.batch_size * self.num_kv_heads, plan.max_suffix_len
        )
        wanted = -(-self.target_programs // (plan.num_tiles * self.num_kv_heads))
        by_len = -(-plan.max_shared_len // MIN_PREFIX_SPLIT_LEN)
        plan.num_prefix_splits = pow2_floor(max(1, min(wanted, by_len, MAX_SPLITS)))
        plan.merge_heads = triton_cascade.merge_heads_per_program(
            batch.batch_size, self.num_q_heads, self.target_programs
        )
        return plan

    def warmup(self, num_q_heads: int) -> None:
        """Compile the cascade's kernels before the first request: the prefix kernel for every
        query-block height a plan can pick (see ``triton_cascade.plan_cascade``), the suffix decode
        and the merge for every heads-per-program count, on a dummy step in slot 0 (tiles with no
        members: nothing is written)."""
        step = dummy_step(self.kv_pool, num_q_heads)
        k_pool, v_pool = self.kv_pool.get(0)
        out = torch.empty_like(step.q, memory_format=torch.contiguous_format)
        shared_lens, tiles = upload_aligned(
            ([0, 0], [0] * (triton_cascade.TILE_HEADER + 2)), step.q.device, torch.int32
        )
        block_heights = triton_cascade.block_heights(num_q_heads // self.num_kv_heads, self.kv_pool.head_dim)
        merge_heads = [1 << i for i in range((num_q_heads - 1).bit_length() + 1)]  # 1, 2, ... >= num_q_heads
        variants = [(m, 1) for m in block_heights] + [(block_heights[0], h) for h in merge_heads[1:]]
        for block_m, heads in variants:
            plan = triton_cascade.CascadePlan(
                batch_size=2,
                shared_lens=shared_lens,
                tiles=tiles.view(1, -1),
                max_members=2,
                block_m=block_m,
                max_shared_len=0,
                max_suffix_len=2,
                merge_heads=heads,
            )
            triton_cascade.cascade_decode_attention(
                step.q, k_pool, v_pool, out, step.qo_indptr, step.kv_indptr, step.kv_slots, plan, 1.0
            )

    def run(
        self,
        q: torch.Tensor,  # [B, Hq, D]
        layer_id: int,
        batch: ForwardBatch,
        plan: triton_cascade.CascadePlan,
        scale: float,
    ) -> torch.Tensor:  # [B, Hq, D], q's dtype; the step's K/V must already be in the pool
        q = q if q.stride(-1) == 1 else q.contiguous()
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        k_pool, v_pool = self.kv_pool.get(layer_id)
        triton_cascade.cascade_decode_attention(
            q, k_pool, v_pool, out, batch.qo_indptr, batch.kv_indptr, batch.kv_slots, plan, scale
        )
        return out


def _some_share_a_first_slot(seq_slots: list[list[int]]) -> bool:
    """A cheap necessary condition for any group: without it the grouper's loop is skipped."""
    return len({slots[0] for slots in seq_slots if slots}) < len(seq_slots)
