"""How the Triton decode kernels are launched and split: block widths, warps and pipeline stages per
kernel, and how many ways a context is split. Plain Python (no triton import), so the CPU suite
checks every rule here.

The launches marked *tuned* were measured fastest on an H200 (Hopper, bf16 K/V, head_dim 128) by
``python -m bench.cascade_kernels`` (2026-11-29; figures in each function). They hold more K/V
tiles in shared memory at once than the launches before them, so they apply only where they were
measured (Hopper, 16-bit K/V, head_dim <= 128); every other card, dtype or head size keeps the
earlier launches, which fit the shared memory of smaller cards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

MIN_SPLIT_LEN = 128  # an eager decode split reads at least this many keys
MIN_PREFIX_SPLIT_LEN = 256  # a split of a shared prefix reads at least this many keys
MAX_SPLITS = 64
MAX_GRAPH_SPLITS = 16  # the most splits a captured decode step takes (``TritonBackend``'s default)
# A split past this many keys keeps its few programs streaming long after the others are done: a
# long context among short ones gets enough splits that none of its programs reads more than this
# (the eager split counts), and a captured step whose split count would not is run eagerly.
MAX_SPLIT_KEYS = 2048
SKEW = 4  # a batch is skewed when its longest context is more than this many times the mean
# a captured step whose batch fills the card alone reads contexts in chunks of MAX_SPLIT_KEYS keys,
# at least this many chunks each (8,192 keys; more where the pool lets every context of the batch be
# longer: ``graph_layout``); a longer context makes the step eager. Programs go only to chunks a
# context has (a work list built on the device): more chunks cost only the float32 partials they
# may hold (batch x q heads x chunks x head_dim)
CHUNKED_GRAPH_SPLITS = 4


@dataclass(frozen=True)
class LaunchConfig:
    """How a KV-streaming kernel is launched: keys per block, warps, software-pipeline stages.
    Each distinct config compiles its own variant."""

    block_n: int
    num_warps: int
    num_stages: int


def tuned(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the launches measured on Hopper apply: a CUDA device of compute capability 9 and a
    16-bit K/V pool."""
    return device.type == "cuda" and dtype.itemsize == 2 and _capability_major(device.index) == 9


def measured_for_every_decode(kv_pool, num_q_heads: int) -> bool:
    """Whether Triton's decode was measured faster than FlashInfer's at every batch size for this
    pool and head layout: the tuned launches (``tuned``, which apply up to head_dim 128) with grouped
    query heads (the ``tl.dot`` path), as in Llama-3.1-8B on an H200 (ninth session)."""
    grouped = num_q_heads // kv_pool.num_kv_heads > 1
    return tuned(kv_pool.device, kv_pool.dtype) and kv_pool.head_dim <= 128 and grouped


@functools.cache
def _capability_major(index: int | None) -> int:
    return torch.cuda.get_device_capability(index)[0]


def decode_block_n(head_dim: int) -> int:
    """Keys per block of the plain decode kernel (and of the launches from before the tuning)."""
    return 64 if head_dim <= 128 else 32


# programs of one decode launch from which two pipeline stages beat three (see ``decode_config``)
MANY_DECODE_PROGRAMS = 2048


def decode_config(head_dim: int, is_tuned: bool, programs: int = 0, chunked: bool = False) -> LaunchConfig:
    """The plain decode kernel's launch for a grid of ``programs`` (0: unknown, a small one). Tuned:
    three pipeline stages instead of two took a batch-32 layer over 1,024-token contexts from 49.3
    to 41.6 us (2 splits each). From ``MANY_DECODE_PROGRAMS`` on, two again: a third stage's shared
    memory leaves room for fewer programs on an SM while the queue of programs is long. One split
    over 768 x 256 / 768 x 512 / 256 x 1,024 contexts took 208 / 395 / 254 us a layer in two stages
    against 214 / 402 / 276 in three (H200, ``bench.cascade_kernels --parts large``). ``chunked``
    (the captured steps of a batch that fills the card; see ``triton_decode.launch``): two."""
    few = programs < MANY_DECODE_PROGRAMS and not chunked
    stages = 3 if is_tuned and head_dim <= 128 and few else 2
    return LaunchConfig(decode_block_n(head_dim), num_warps=4, num_stages=stages)


def prefix_config(block_m: int, head_dim: int, is_tuned: bool) -> LaunchConfig:
    """The cascade prefix kernel's launch for ``block_m`` query rows. Tuned (measured at 64 rows: 64
    groups x 16 sequences, GQA 4): 128 keys a block without pipelining, at one split, read a
    2,048-token prefix layer in 203-206 us, against 237-242 for 64 keys in two stages at two splits
    (the split count: ``SharedPrefixDecode``'s plan)."""
    if is_tuned and block_m == 64 and head_dim <= 128:
        return LaunchConfig(128, num_warps=4, num_stages=1)
    num_warps = 8 if block_m * _next_power_of_2(head_dim) >= 128 * 128 else 4
    return LaunchConfig(decode_block_n(head_dim), num_warps, num_stages=2)


def suffix_config(head_dim: int, is_tuned: bool) -> LaunchConfig:
    """The cascade suffix decode's launch: many short ranges (each request's own tokens) at large
    batches. Tuned: 32 keys a block, 2 warps and 4 stages took 1,024 suffixes of 129 / 256 / 384
    tokens in 228 / 317 / 458 us, against 247 / 341 / 476 for 64 keys, 4 warps and 2 stages."""
    if is_tuned and head_dim <= 128:
        return LaunchConfig(32, num_warps=2, num_stages=4)
    return LaunchConfig(decode_block_n(head_dim), num_warps=4, num_stages=2)


def decode_splits(target: int, programs_per_split: int, max_len: int) -> int:
    """Splits per context of an eager decode step: enough for twice ``target`` programs, none shorter
    than ``MIN_SPLIT_LEN`` keys, and enough that none reads more than ``MAX_SPLIT_KEYS`` of the
    longest context; a power of two (the kernels compile one variant for any count, but few
    distinct counts keep the merge's work predictable)."""
    wanted = -(-2 * target // max(programs_per_split, 1))
    by_len = -(-max_len // MIN_SPLIT_LEN)
    longest = -(-max_len // MAX_SPLIT_KEYS)
    return pow2_floor(max(1, min(max(min(wanted, by_len), longest), MAX_SPLITS)))


def graph_splits(target: int, programs_per_split: int, most: int = MAX_GRAPH_SPLITS) -> int:
    """Splits per context of a captured decode step, whose lengths are unknown at capture: enough
    for twice ``target`` programs, at most ``most``, a power of two. Over 1,024-token contexts on an
    H200 (target 264, 8 KV heads) this is the fastest count measured at each batch: 16 at batch 1,
    8 at batch 8 (15.6 us a layer against 17.4 at 16 splits), 2 at batch 32 (41.9 against 49.5).
    A batch it would serve badly runs eagerly instead (``skewed``)."""
    wanted = -(-2 * target // max(programs_per_split, 1))
    return pow2_floor(max(1, min(wanted, most)))


@dataclass(frozen=True)
class DecodeLayout:
    """How a captured decode step splits its contexts: ``splits`` ways evenly (``chunk_len`` 0), or
    in chunks of ``chunk_len`` keys, at most ``splits`` of them (a shorter context is one split)."""

    splits: int
    chunk_len: int = 0


def graph_layout(
    target: int, batch_size: int, num_kv_heads: int, most: int = MAX_GRAPH_SPLITS, pool_slots: int = 0
) -> DecodeLayout:
    """The layout of a captured decode step. Below the card's program target, contexts split evenly
    (``graph_splits``). A batch that fills the card alone (one split) is chunked instead: a context
    of at most ``MAX_SPLIT_KEYS`` keys is one split, written without a merge, and a longer one is
    read in chunks of that many keys, then merged. One long context among short ones then no longer
    makes the step eager: with one split it did, and in workload (a) every large step on the Triton
    decode ran eagerly while its 2,048-token prompts decoded. Chunks per context:
    ``CHUNKED_GRAPH_SPLITS``, or enough for the batch's contexts to share ``pool_slots`` evenly
    (a batch whose every context is long still replays), at most ``most``."""
    splits = graph_splits(target, batch_size * num_kv_heads, most)
    if splits > 1 or most <= 1:  # (one even split reads a context of any length)
        return DecodeLayout(splits)
    even_share = -(-pool_slots // (max(batch_size, 1) * MAX_SPLIT_KEYS))
    return DecodeLayout(min(max(CHUNKED_GRAPH_SPLITS, even_share), most), MAX_SPLIT_KEYS)


def needs_eager(seq_lens: list[int], layout: DecodeLayout) -> bool:
    """Whether a decode batch must not replay a step captured with ``layout``: a chunked step reads
    at most ``splits * chunk_len`` keys of a context (a longer one would be cut short); an evenly
    split one would be ``skewed``."""
    if layout.chunk_len:
        return max(seq_lens, default=0) > layout.splits * layout.chunk_len
    return skewed(seq_lens, layout.splits)


def skewed(seq_lens: list[int], splits: int) -> bool:
    """Whether ``splits`` ways would leave the longest of ``seq_lens`` to a few programs that each
    read more than ``MAX_SPLIT_KEYS`` keys while the others' contexts are much shorter (more than
    ``SKEW`` times shorter on average): the step would wait for those few programs."""
    longest = max(seq_lens, default=0)
    if -(-longest // max(splits, 1)) <= MAX_SPLIT_KEYS:
        return False
    return longest * len(seq_lens) > SKEW * sum(seq_lens)


def pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def target_programs(device: torch.device) -> int:
    """Decode programs that keep the device busy: two per SM (a fixed guess off CUDA)."""
    if device.type != "cuda":
        return 64
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
