"""Triton attention over the radix cache's paged pool (page size 1: a slot is one token's K/V row).

Per step ``prepare`` does all host work and uploads at most one small index tensor; every layer
then runs, after one fused K/V store:

* a pure decode batch: the flash-decoding kernel (split over the context, then merged), one
  query row per sequence, sequence ``i`` being row ``i``;
* anything else: decode rows (``extend_len == 1``) on the same decode kernel, gathered by
  sequence id, and the rows of longer extends (prefill, chunked prefill, extend over a prefix
  hit) on the extend kernel, in query blocks planned on the host, longest context first so the
  long blocks do not end up as the tail of the launch.

A pure decode batch whose sequences share long prefixes (same leading slots: radix-tree hits)
runs the cascade instead when it pays (``shared_prefix.py``). Such steps are eager only:
``wants_eager(batch)`` tells the runner not to replay a CUDA graph for them.

Decode steps can be captured in CUDA graphs: after ``prepare_graph`` the forward reads every
length from the batch's device tensors (the graph runner's static buffers), splits each context
a number of ways fixed per captured batch size (``graph_splits``), and allocates only buffers
shaped by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixserve.attention import triton_cascade, triton_decode, triton_kernels
from radixserve.attention.base import AttentionBackend, ForwardBatch
from radixserve.attention.dummy_step import dummy_step
from radixserve.attention.launch_configs import (
    MAX_GRAPH_SPLITS,
    DecodeLayout,
    decode_splits,
    graph_layout,
    needs_eager,
)
from radixserve.attention.shared_prefix import SharedPrefixDecode
from radixserve.attention.upload import upload_aligned

# decodes whose splits or chunks merge themselves (``decode_attention``'s ``counters``: one int32 per
# sequence and KV head); a larger decode (beyond the captured sizes) launches a merge kernel
MAX_FUSED_MERGE_SEQS = 1024


@dataclass
class _StepPlan:
    num_decodes: int  # sequences on the decode kernel
    decode_seq_ids: torch.Tensor | None  # [num_decodes] int32; None: the whole batch decodes, row i = sequence i
    num_splits: int  # ways each decode context is split
    block_seq: torch.Tensor | None  # [num_blocks] int32, sequence of each extend query block
    block_index: torch.Tensor | None  # [num_blocks] int32, the block's index within its sequence's rows
    cascade: triton_cascade.CascadePlan | None = None  # set: the whole (decode) step runs the cascade
    chunk_len: int = 0  # > 0: decode contexts read in chunks of this many keys (a captured layout)
    work: torch.Tensor | None = None  # chunked: the chunks' work list, built by the pass's first layer
    work_layer: int = -1  # that layer: each pass (a replay too) rebuilds the list there


class TritonBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(
        self,
        kv_pool,
        num_kv_splits: int = MAX_GRAPH_SPLITS,
        num_q_heads: int | None = None,
        min_shared_prefix: int | None = None,
        min_saved_bytes: int | None = None,
    ):
        """``kv_pool``: a ``radixserve.runner.kv_pool.KVPool`` (CUDA; CPU tensors only under
        ``TRITON_INTERPRET=1``). ``num_kv_splits``: the most splits of a captured decode step (see ``graph_splits``).
        ``num_q_heads``: lets the first decode step already use the cascade (otherwise learnt from
        the first forward). ``min_shared_prefix``, ``min_saved_bytes``: when a cascade step pays.
        """
        self.kv_pool = kv_pool
        self.num_kv_heads = kv_pool.num_kv_heads
        self.num_kv_splits = num_kv_splits
        self.block_m = triton_kernels.extend_block_m(kv_pool.head_dim)
        self.shared_prefix = SharedPrefixDecode(kv_pool, num_q_heads, min_shared_prefix, min_saved_bytes)
        self._plan: _StepPlan | None = None
        self._captured: dict[int, DecodeLayout] = {}  # layout of each captured (padded) batch size
        # zero between launches; one launch at a time uses them (this backend's steps are in order)
        self._merge_counters = torch.zeros(
            MAX_FUSED_MERGE_SEQS * self.num_kv_heads, dtype=torch.int32, device=kv_pool.device
        )

    @property
    def step_cascade(self) -> triton_cascade.CascadePlan | None:
        """The cascade layout of the step last prepared, None when it runs the plain kernels."""
        return self._plan.cascade if self._plan is not None else None

    # ---- planning (host side, once per step) ------------------------------------------------

    def wants_eager(self, batch: ForwardBatch) -> bool:
        """True when ``batch`` runs the shared-prefix cascade (eager only) rather than the plain
        decode a CUDA graph would replay (the plan made here is reused by ``prepare(batch)``), or
        when the layout captured at the padded size does not suit its lengths
        (``launch_configs.needs_eager``: the eager step splits for the longest context)."""
        if self.shared_prefix.plan(batch) is not None:
            return True
        return batch.is_decode and needs_eager(batch.seq_lens, self._replay_layout(batch.batch_size))

    def prepare(self, batch: ForwardBatch) -> None:
        cascade = self.shared_prefix.take(batch)
        if cascade is not None:
            self._plan = _StepPlan(0, None, 0, None, None, cascade)
            return
        if batch.is_decode:
            splits = self._eager_splits(batch.batch_size, max(batch.seq_lens, default=1))
            self._plan = _StepPlan(batch.batch_size, None, splits, None, None)
            return
        decode_ids = [i for i, n in enumerate(batch.extend_lens) if n == 1]
        block_seq, block_index = self._plan_extend_blocks(batch)
        # one upload: [decode ids | block sequences | block indices]
        decode_seq_ids, block_seq_t, block_index_t = upload_aligned(
            (decode_ids, block_seq, block_index), batch.kv_slots.device, torch.int32
        )
        max_decode_len = max((batch.seq_lens[i] for i in decode_ids), default=1)
        self._plan = _StepPlan(
            num_decodes=len(decode_ids),
            decode_seq_ids=decode_seq_ids,
            num_splits=self._eager_splits(len(decode_ids), max_decode_len),
            block_seq=block_seq_t,
            block_index=block_index_t,
        )

    def prepare_graph(self, batch: ForwardBatch) -> None:
        """Plan a padded decode batch held in static buffers; the forward after it is capturable."""
        self.shared_prefix.forget()
        layout = self._graph_layout(batch.batch_size)
        self._captured[batch.batch_size] = layout
        self._plan = _StepPlan(batch.batch_size, None, layout.splits, None, None, chunk_len=layout.chunk_len)

    def _graph_layout(self, batch_size: int) -> DecodeLayout:
        """The layout of a captured decode step of ``batch_size``."""
        return graph_layout(
            self.shared_prefix.target_programs,
            batch_size,
            self.num_kv_heads,
            self.num_kv_splits,
            self.kv_pool.num_slots - 1,
        )

    def _replay_layout(self, batch_size: int) -> DecodeLayout:
        """The layout a replay of a ``batch_size`` batch would run: the graph runner pads it to the
        smallest captured size that holds it (``DecodeGraphRunner.replay``)."""
        padded = min((size for size in self._captured if size >= batch_size), default=batch_size)
        return self._captured.get(padded) or self._graph_layout(padded)

    def _eager_splits(self, num_decodes: int, max_len: int) -> int:
        return decode_splits(self.shared_prefix.target_programs, num_decodes * self.num_kv_heads, max_len)

    def warmup(self, num_q_heads: int) -> None:
        """Compile, before the first request, every variant an eager step can launch: the decode
        kernels (one split, and several with their merge; whole batch and gathered rows), the extend kernel, the K/V store
        and the shared-prefix cascade. Otherwise each compiles on first use,
        stalling that step ~1 s. (Triton caches compiled kernels on disk: later starts only load
        them.)"""
        step = dummy_step(self.kv_pool, num_q_heads)
        k_pool, v_pool = self.kv_pool.get(0)
        out = torch.empty_like(step.q, memory_format=torch.contiguous_format)
        indices = (step.qo_indptr, step.kv_indptr, step.kv_slots)
        seq_ids, block = upload_aligned(([1], [0]), step.q.device, torch.int32)
        triton_kernels.store_kv(step.k, step.v, k_pool, v_pool, step.out_slots)
        # whole batch and gathered decode rows; one split writes its output directly, more merge
        # themselves (or, past MAX_FUSED_MERGE_SEQS decodes, in the merge kernel)
        rows = ((None, 2), (seq_ids, 1))
        triton_decode.warmup(step.q, k_pool, v_pool, out, *indices, rows=rows, counters=self._merge_counters)
        triton_kernels.extend_attention(step.q, k_pool, v_pool, out, *indices, block, block, 1.0)
        self.shared_prefix.warmup(num_q_heads)
        device = step.q.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _plan_extend_blocks(self, batch: ForwardBatch) -> tuple[list[int], list[int]]:
        """Query blocks of every sequence with ``extend_len > 1``, the most keys to read first."""
        blocks = []  # (keys the block reads, sequence, block index)
        for seq, (seq_len, extend_len) in enumerate(zip(batch.seq_lens, batch.extend_lens)):
            if extend_len <= 1:
                continue
            prefix_len = seq_len - extend_len
            for index in range(-(-extend_len // self.block_m)):
                last_row = min((index + 1) * self.block_m, extend_len)
                blocks.append((prefix_len + last_row, seq, index))
        blocks.sort(key=lambda block: -block[0])
        return [seq for _, seq, _ in blocks], [index for _, _, index in blocks]

    # ---- per layer ------------------------------------------------------------------------------

    def kv_target(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool of ``layer_id``: the model's RoPE kernel may store the new K/V there itself."""
        return self.kv_pool.get(layer_id)

    def forward(
        self,
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer_id: int,
        batch: ForwardBatch,
        scale: float,
        kv_stored: bool = False,
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim], q's dtype
        plan = self._plan
        self.shared_prefix.num_q_heads = q.shape[1]
        k_pool, v_pool = self.kv_pool.get(layer_id)  # [num_slots, Hkv, D] each
        if not kv_stored:
            triton_kernels.store_kv(k, v, k_pool, v_pool, batch.out_slots)
        q = _last_dim_contiguous(q)
        if plan.cascade is not None:
            return self.shared_prefix.run(q, layer_id, batch, plan.cascade, scale)
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        indices = (batch.qo_indptr, batch.kv_indptr, batch.kv_slots)
        if plan.num_decodes:
            merge_heads = 1
            if plan.chunk_len:
                merge_heads = triton_cascade.merge_heads_per_program(
                    plan.num_decodes, q.shape[1], self.shared_prefix.target_programs
                )
                if plan.work is None or layer_id == plan.work_layer:  # once a pass, inside a captured graph too
                    plan.work = triton_decode.chunk_work(
                        batch.kv_indptr, plan.decode_seq_ids, plan.num_decodes, plan.num_splits, plan.chunk_len
                    )
                    plan.work_layer = layer_id
            triton_decode.decode_attention(
                q, k_pool, v_pool, out, *indices, plan.decode_seq_ids, plan.num_decodes, plan.num_splits, scale,
                chunk_len=plan.chunk_len, merge_heads=merge_heads, work=plan.work, counters=self._merge_counters,
            )  # fmt: skip
        if plan.block_seq is not None:
            triton_kernels.extend_attention(q, k_pool, v_pool, out, *indices, plan.block_seq, plan.block_index, scale)
        return out


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()
