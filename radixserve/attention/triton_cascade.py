"""Cascade decode attention: a shared prefix is read once per group, not once per sequence.

For a pure decode batch in which groups of sequences start with the same KV slots (found by
``prefix_groups.PrefixGrouper``), attention of each query row splits by log-sum-exp into two parts
over disjoint keys, then merges:

    sequence s in group g, context = [ shared prefix (shared_len[g]) | own suffix (>= 1 key) ]

    prefix kernel, grid (tile, kv head, split): a tile is up to ``members_per_tile`` members of one
        group; its program stacks every member's query heads of one KV head into one
        ``[BLOCK_M, D]`` block (``BLOCK_M >= 16`` rows for ``tl.dot``) and streams its slice of the
        prefix's K/V once for all of them -> partial (out, lse) per member, head and split
    suffix, ``triton_decode.decode_partials`` from position ``shared_len[s]`` (0 outside any
        group: the whole context) -> partial (out, lse) per sequence, head and split
    merge kernel, grid (sequence, q head): all partials weighed by ``exp2(lse - max)`` -> out

Everything data dependent (tiles, members, shared lengths) is planned on the host and uploaded
as one int32 tensor per step; accumulators are float32, softmax in base 2 as in
``triton_kernels``. Eager only: shapes depend on the grouping, so these steps are not captured
in CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from radixserve.attention import launch_configs, triton_decode, triton_kernels
from radixserve.attention.launch_configs import LaunchConfig, tuned
from radixserve.attention.prefix_groups import PrefixGroups
from radixserve.attention.upload import upload_aligned

MAX_TILE_ROWS = 128  # query rows (members x GQA heads) per prefix program; half that above head_dim 128
TILE_HEADER = 2  # a tile row is [shared_len, num_members, member seq ids...]


@triton.jit(do_not_specialize=["num_splits", "tile_stride"])  # one compiled variant whatever they are
def _shared_prefix_kernel(
    q_ptr,  # [T, Hq, D]
    k_pool_ptr,  # [num_slots, Hkv, D]
    v_pool_ptr,  # [num_slots, Hkv, D]
    qo_indptr_ptr,  # [B + 1]
    kv_indptr_ptr,  # [B + 1]
    kv_slots_ptr,  # [sum(seq_lens)]
    tiles_ptr,  # [num_tiles, tile_stride] int32: TILE_HEADER, then the members (padded)
    part_out_ptr,  # [B, Hq, num_splits, D] float32, written for grouped sequences only
    part_lse_ptr,  # [B, Hq, num_splits] float32, base 2
    scale_log2,
    stride_q_token,
    stride_q_head,
    stride_pool_slot,
    stride_pool_head,
    num_splits,
    tile_stride,  # a runtime value: a constexpr would compile a kernel per tile width seen
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    AFFINE: tl.constexpr,  # each tile's prefix slots are consecutive (see ``attend_kv_range``)
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    tile_ptr = tiles_ptr + tile * tile_stride
    shared_len = tl.load(tile_ptr)
    num_members = tl.load(tile_ptr + 1)
    # the prefix's slots are read from the first member's context (every member holds the same)
    kv_start = tl.load(kv_indptr_ptr + tl.load(tile_ptr + 2)).to(tl.int64)
    split_len = (shared_len + num_splits - 1) // num_splits
    split_len = (split_len + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, shared_len)

    # query row r of the block is member r // GROUP, q head kv_head * GROUP + r % GROUP
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    member = offs_m // GROUP
    m_mask = member < num_members
    d_mask = offs_d < HEAD_DIM
    seqs = tl.load(tile_ptr + 2 + member, mask=m_mask, other=0)  # [BLOCK_M]
    rows = tl.load(qo_indptr_ptr + seqs, mask=m_mask, other=0).to(tl.int64)
    heads = kv_head * GROUP + offs_m % GROUP
    q_offs = rows[:, None] * stride_q_token + heads[:, None] * stride_q_head + offs_d[None, :]
    q = tl.load(q_ptr + q_offs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    q = q.to(k_pool_ptr.dtype.element_ty)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i, l_i, acc = triton_kernels.attend_kv_range(
        q, m_i, l_i, acc, k_pool_ptr, v_pool_ptr, kv_slots_ptr, kv_start, kv_head, offs_m, lo, hi,
        scale_log2, stride_pool_slot, stride_pool_head, HEAD_DIM, BLOCK_D, BLOCK_N, False, AFFINE,
    )  # fmt: skip

    # an empty split (prefix shorter than the split count allows) weighs nothing in the merge
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    part = (seqs.to(tl.int64) * NUM_Q_HEADS + heads) * num_splits + split  # [BLOCK_M]
    tl.store(part_lse_ptr + part, lse, mask=m_mask)
    tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=m_mask[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["num_prefix_splits", "num_suffix_splits"])
def _cascade_merge_kernel(
    prefix_out_ptr,  # [B, Hq, num_prefix_splits, D] float32
    prefix_lse_ptr,  # [B, Hq, num_prefix_splits] float32
    suffix_out_ptr,  # [B, Hq, num_suffix_splits, D] float32
    suffix_lse_ptr,  # [B, Hq, num_suffix_splits] float32
    shared_lens_ptr,  # [B] int32, 0: the sequence has no prefix part
    out_ptr,  # [T, Hq, D]
    qo_indptr_ptr,  # [B + 1]
    stride_out_token,
    stride_out_head,
    num_prefix_splits,
    num_suffix_splits,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Log-sum-exp merge of a sequence's prefix and suffix partials, ``CHUNK`` splits at a time
    (any split counts, one compiled variant)."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    num_prefix = tl.where(tl.load(shared_lens_ptr + seq) > 0, num_prefix_splits, 0)
    prefix_base = (seq * NUM_Q_HEADS + head).to(tl.int64) * num_prefix_splits
    suffix_base = (seq * NUM_Q_HEADS + head).to(tl.int64) * num_suffix_splits
    # the largest log-sum-exp (suffix split 0 always holds the newest key: finite), then the sum
    top = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
    top = triton_kernels.lse_max(prefix_lse_ptr, prefix_base, num_prefix, top, CHUNK)
    best = tl.max(triton_kernels.lse_max(suffix_lse_ptr, suffix_base, num_suffix_splits, top, CHUNK), 0)
    total = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
    weight = tl.zeros([CHUNK], dtype=tl.float32)
    total, weight = triton_kernels.weighted_partials(
        prefix_lse_ptr, prefix_out_ptr, prefix_base, num_prefix, best, total, weight, offs_d, d_mask, HEAD_DIM, CHUNK
    )
    total, weight = triton_kernels.weighted_partials(
        suffix_lse_ptr, suffix_out_ptr, suffix_base, num_suffix_splits, best, total, weight, offs_d, d_mask,
        HEAD_DIM, CHUNK,
    )  # fmt: skip
    out = tl.sum(total, 0) / tl.sum(weight, 0)
    row = tl.load(qo_indptr_ptr + seq).to(tl.int64)
    tl.store(
        out_ptr + row * stride_out_token + head * stride_out_head + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=d_mask,
    )


@triton.jit(do_not_specialize=["num_prefix_splits", "num_suffix_splits"])  # one variant for any counts
def _cascade_merge_heads_kernel(
    prefix_out_ptr,  # [B, Hq, num_prefix_splits, D] float32
    prefix_lse_ptr,  # [B, Hq, num_prefix_splits] float32
    suffix_out_ptr,  # [B, Hq, num_suffix_splits, D] float32
    suffix_lse_ptr,  # [B, Hq, num_suffix_splits] float32
    shared_lens_ptr,  # [B] int32, 0: the sequence has no prefix part
    out_ptr,  # [T, Hq, D]
    qo_indptr_ptr,  # [B + 1]
    stride_out_token,
    stride_out_head,
    num_prefix_splits,
    num_suffix_splits,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """The merge of ``_cascade_merge_kernel`` for ``BLOCK_H`` heads of a sequence per program, one
    split at a time: at large batches (few splits each) a program per (sequence, head) does too
    little work to pay for itself (32,768 programs a layer at 1,024 sequences x 32 heads)."""
    seq = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = heads < NUM_Q_HEADS
    offs_d = tl.arange(0, BLOCK_D)
    mask = h_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    num_prefix = tl.where(tl.load(shared_lens_ptr + seq) > 0, num_prefix_splits, 0)
    prefix_base = (seq * NUM_Q_HEADS + heads).to(tl.int64) * num_prefix_splits  # [BLOCK_H]
    suffix_base = (seq * NUM_Q_HEADS + heads).to(tl.int64) * num_suffix_splits
    # the largest log-sum-exp per head (suffix split 0 always holds the newest key: finite); heads
    # past NUM_Q_HEADS read 0 and are never stored
    best = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    best = triton_kernels.heads_lse_max(prefix_lse_ptr, prefix_base, num_prefix, h_mask, best)
    best = triton_kernels.heads_lse_max(suffix_lse_ptr, suffix_base, num_suffix_splits, h_mask, best)
    total = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    weight = tl.zeros([BLOCK_H], dtype=tl.float32)
    total, weight = triton_kernels.heads_weighted(
        prefix_lse_ptr, prefix_out_ptr, prefix_base, num_prefix, best, total, weight, offs_d, h_mask, mask, HEAD_DIM
    )
    total, weight = triton_kernels.heads_weighted(
        suffix_lse_ptr, suffix_out_ptr, suffix_base, num_suffix_splits, best, total, weight, offs_d, h_mask, mask,
        HEAD_DIM,
    )  # fmt: skip
    out = total / weight[:, None]
    row = tl.load(qo_indptr_ptr + seq).to(tl.int64)
    out_offs = row * stride_out_token + heads[:, None] * stride_out_head + offs_d[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def merge_heads_per_program(batch_size: int, num_q_heads: int, target_programs: int) -> int:
    """Heads the cascade's merge handles per program: 1 while a program per (sequence, head) is at
    most twice ``target_programs`` (the device's concurrent programs), else as many heads as keep
    at least that many programs (a power of two, at most all of them)."""
    per_program = (batch_size * num_q_heads) // (2 * target_programs)
    if per_program < 2:
        return 1
    return min(1 << (per_program.bit_length() - 1), triton.next_power_of_2(num_q_heads))


# ---- host planning ------------------------------------------------------------------------------


@dataclass
class CascadePlan:
    """One step's cascade layout, on the device. Built by ``plan_cascade``; splits set by the caller."""

    batch_size: int
    shared_lens: torch.Tensor  # [B] int32, each sequence's shared prefix length (0 outside groups)
    tiles: torch.Tensor  # [num_tiles, TILE_HEADER + max_members] int32, longest prefix first
    max_members: int
    block_m: int  # query rows per prefix program: >= max_members * GQA group, >= 16, a power of 2
    max_shared_len: int
    max_suffix_len: int  # the most keys any sequence reads past its shared prefix
    num_prefix_splits: int = 1
    num_suffix_splits: int = 1
    merge_heads: int = 1  # heads per program of the merge (``merge_heads_per_program``)
    prefix_config: LaunchConfig | None = None  # default: ``launch_configs.prefix_config``
    suffix_config: LaunchConfig | None = None  # default: ``launch_configs.suffix_config``
    # every tile's prefix slots are consecutive: read by address, not by slot id (only
    # ``bench.cascade_kernels`` sets it, to time the difference; the planner does not check it)
    prefix_affine: bool = False

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[0])


def plan_cascade(
    groups: PrefixGroups, seq_lens: list[int], gqa_group: int, head_dim: int, device: torch.device
) -> CascadePlan:
    """Cut ``groups`` into tiles of at most ``MAX_TILE_ROWS // gqa_group`` members (a group too big
    for one tile is split evenly, each tile reading the prefix once) and upload the layout."""
    members_per_tile = _members_per_tile(gqa_group, head_dim)
    tiles = []  # (shared_len, members)
    for group in groups.groups:
        num_tiles = -(-len(group.members) // members_per_tile)
        size = -(-len(group.members) // num_tiles)
        tiles += [(group.shared_len, group.members[i : i + size]) for i in range(0, len(group.members), size)]
    tiles.sort(key=lambda tile: -tile[0])
    max_members = max((len(members) for _, members in tiles), default=1)
    tile_rows: list[int] = []
    for shared_len, members in tiles:
        tile_rows += [shared_len, len(members), *members] + [members[0]] * (max_members - len(members))
    shared_lens, tiles_t = upload_aligned((groups.shared_lens, tile_rows), device, torch.int32)
    return CascadePlan(
        batch_size=len(seq_lens),
        shared_lens=shared_lens,
        tiles=tiles_t.view(len(tiles), TILE_HEADER + max_members),
        max_members=max_members,
        block_m=_block_height(max_members, gqa_group),
        max_shared_len=max((shared_len for shared_len, _ in tiles), default=0),
        max_suffix_len=max(n - shared for n, shared in zip(seq_lens, groups.shared_lens)),
    )


def _members_per_tile(gqa_group: int, head_dim: int) -> int:
    max_rows = MAX_TILE_ROWS if head_dim <= 128 else MAX_TILE_ROWS // 2  # the accumulator is rows x head_dim
    return max(1, max_rows // gqa_group)


def _block_height(members: int, gqa_group: int) -> int:
    """Query rows of a prefix program for tiles of up to ``members``: >= 16, a power of 2."""
    return max(16, triton.next_power_of_2(members * gqa_group))


def block_heights(gqa_group: int, head_dim: int) -> list[int]:
    """Every ``block_m`` a plan can pick (tiles hold 2 .. members_per_tile members)."""
    most = _members_per_tile(gqa_group, head_dim)
    return sorted({_block_height(members, gqa_group) for members in range(min(2, most), most + 1)})


# ---- launch -------------------------------------------------------------------------------------


def cascade_decode_attention(
    q: torch.Tensor,  # [B, Hq, D], last dim contiguous; one query row per sequence
    k_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    v_pool: torch.Tensor,  # [num_slots, Hkv, D] contiguous
    out: torch.Tensor,  # [B, Hq, D]; every row is written
    qo_indptr: torch.Tensor,  # [B + 1]
    kv_indptr: torch.Tensor,  # [B + 1]
    kv_slots: torch.Tensor,
    plan: CascadePlan,
    scale: float,
) -> None:
    """Decode attention of every sequence over its whole context, shared prefixes read once per tile."""
    prefix_out, prefix_lse = prefix_partials(q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, plan, scale)
    suffix_out, suffix_lse = triton_decode.decode_partials(
        q,
        k_pool,
        v_pool,
        qo_indptr,
        kv_indptr,
        kv_slots,
        None,
        plan.batch_size,
        plan.num_suffix_splits,
        scale,
        kv_offsets=plan.shared_lens,
        config=plan.suffix_config or launch_configs.suffix_config(q.shape[2], tuned(q.device, k_pool.dtype)),
    )
    merge_partials(prefix_out, prefix_lse, suffix_out, suffix_lse, out, qo_indptr, plan)


def prefix_partials(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_slots: torch.Tensor,
    plan: CascadePlan,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # [B, Hq, num_prefix_splits, D], [B, Hq, num_prefix_splits]
    """The prefix kernel's partials (written for grouped sequences only)."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_pool.shape[1]
    batch_size, num_prefix = plan.batch_size, plan.num_prefix_splits
    prefix_out = torch.empty(batch_size, num_q_heads, num_prefix, head_dim, dtype=torch.float32, device=q.device)
    prefix_lse = torch.empty(batch_size, num_q_heads, num_prefix, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    config = plan.prefix_config or launch_configs.prefix_config(plan.block_m, head_dim, tuned(q.device, k_pool.dtype))
    if plan.num_tiles:
        _shared_prefix_kernel[(plan.num_tiles, num_kv_heads, num_prefix)](
            q, k_pool, v_pool, qo_indptr, kv_indptr, kv_slots, plan.tiles, prefix_out, prefix_lse,
            scale * triton_kernels.LOG2_E, q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), num_prefix,
            plan.tiles.stride(0), NUM_Q_HEADS=num_q_heads, GROUP=num_q_heads // num_kv_heads,
            HEAD_DIM=head_dim, BLOCK_M=plan.block_m, BLOCK_D=block_d, BLOCK_N=config.block_n,
            AFFINE=plan.prefix_affine, num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
    return prefix_out, prefix_lse


def merge_partials(
    prefix_out: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_out: torch.Tensor,
    suffix_lse: torch.Tensor,
    out: torch.Tensor,  # [B, Hq, D]
    qo_indptr: torch.Tensor,
    plan: CascadePlan,
) -> None:
    """Every sequence's prefix and suffix partials merged by log-sum-exp into ``out``."""
    batch_size, num_prefix = plan.batch_size, plan.num_prefix_splits
    num_q_heads, head_dim = out.shape[1], out.shape[2]
    block_d = triton.next_power_of_2(head_dim)
    if plan.merge_heads > 1:
        _cascade_merge_heads_kernel[(batch_size, triton.cdiv(num_q_heads, plan.merge_heads))](
            prefix_out, prefix_lse, suffix_out, suffix_lse, plan.shared_lens, out, qo_indptr,
            out.stride(0), out.stride(1), num_prefix, plan.num_suffix_splits,
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=plan.merge_heads,
            num_warps=8 if plan.merge_heads * block_d >= 2048 else 4,
        )  # fmt: skip
        return
    _cascade_merge_kernel[(batch_size, num_q_heads)](
        prefix_out, prefix_lse, suffix_out, suffix_lse, plan.shared_lens, out, qo_indptr,
        out.stride(0), out.stride(1), num_prefix, plan.num_suffix_splits,
        NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, CHUNK=triton_decode.MERGE_CHUNK,
        num_warps=4 if head_dim >= 128 else 2,
    )  # fmt: skip
