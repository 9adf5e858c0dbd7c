"""The Triton decode kernels' launch and split rules (``attention/launch_configs.py``): plain Python,
checked here without triton or a GPU."""

from __future__ import annotations

import torch

from radixserve.attention import launch_configs as lc

TARGET = 264  # two programs per SM on a 132-SM card (an H100 or H200)
KV_HEADS = 8


def test_captured_decode_splits_follow_the_batch_size():
    """Twice the device's programs, at most the graph's maximum: the counts measured fastest at
    batch 1, 8 and 32 over 1,024-token contexts on an H200 (16, 8, 2)."""
    assert [lc.graph_splits(TARGET, batch * KV_HEADS) for batch in (1, 8, 32, 64, 256)] == [16, 8, 2, 2, 1]
    assert lc.graph_splits(TARGET, KV_HEADS, most=4) == 4  # never more than the most allowed
    assert lc.graph_splits(64, KV_HEADS) == 16  # a small device still splits a single sequence


def test_eager_splits_fill_the_device_and_bound_the_longest_context():
    assert lc.decode_splits(TARGET, 8 * KV_HEADS, 1024) == 8  # as the captured step at batch 8
    assert lc.decode_splits(TARGET, 32 * KV_HEADS, 1024) == 2
    assert lc.decode_splits(TARGET, KV_HEADS, 128) == 1  # about MIN_SPLIT_LEN keys a split at least
    assert lc.decode_splits(TARGET, KV_HEADS, 256) == 2
    # a 32k context among 31 others: 16 splits, none reading more than MAX_SPLIT_KEYS of it
    assert lc.decode_splits(TARGET, 32 * KV_HEADS, 32768) == 16
    assert lc.decode_splits(TARGET, 1024 * KV_HEADS, 300) == 1
    assert lc.decode_splits(TARGET, 1024 * KV_HEADS, 10**6) == lc.MAX_SPLITS


def test_a_long_context_among_short_ones_is_skewed():
    short = [1024] * 31
    assert lc.skewed(short + [32768], splits=2)  # 16k keys a program while the rest read 512
    assert not lc.skewed(short + [32768], splits=16)  # 2k keys a program: bounded
    assert not lc.skewed([8192] * 32, splits=2)  # long but even: every program reads as much
    assert not lc.skewed(short + [4096], splits=2)  # 2,048 keys a program: bounded
    assert not lc.skewed([], splits=2)


def test_a_batch_that_fills_the_card_is_captured_in_chunks():
    """Below the program target a captured step splits contexts evenly; a batch that fills the card
    alone reads them in chunks of MAX_SPLIT_KEYS keys: CHUNKED_GRAPH_SPLITS of them, or enough for
    its contexts to share the pool evenly (at most the graph's maximum)."""
    assert lc.graph_layout(TARGET, 32, KV_HEADS) == lc.DecodeLayout(2)
    chunked = lc.graph_layout(TARGET, 256, KV_HEADS, pool_slots=828_012)
    assert chunked == lc.DecodeLayout(lc.CHUNKED_GRAPH_SPLITS, lc.MAX_SPLIT_KEYS)
    assert lc.MAX_SPLIT_KEYS % 128 == 0  # a whole number of KV blocks at every launch's block width
    # 66 contexts sharing an 828k-token pool average 12.5k keys: 7 chunks; a huge pool: the maximum
    assert lc.graph_layout(TARGET, 66, KV_HEADS, pool_slots=828_012) == lc.DecodeLayout(7, lc.MAX_SPLIT_KEYS)
    assert lc.graph_layout(TARGET, 66, KV_HEADS, pool_slots=10**8).splits == lc.MAX_GRAPH_SPLITS
    assert lc.graph_layout(TARGET, 256, KV_HEADS, most=2) == lc.DecodeLayout(2, lc.MAX_SPLIT_KEYS)
    assert lc.graph_layout(TARGET, 256, KV_HEADS, most=1) == lc.DecodeLayout(1)  # reads any length


def test_a_chunked_step_replays_until_a_context_outgrows_its_chunks():
    """Workload (a)'s large batches: one 2,717-token context among ~300-token ones was skewed at one
    split (every such step ran eagerly); chunked, it replays. A context past every chunk would be
    cut short, so that step must run eagerly."""
    chunked = lc.DecodeLayout(4, 2048)
    batch = [300] * 700 + [2717]
    assert lc.skewed(batch, splits=1)
    assert not lc.needs_eager(batch, chunked)
    assert not lc.needs_eager([300] * 700 + [4 * 2048], chunked)
    assert lc.needs_eager([300] * 700 + [4 * 2048 + 1], chunked)
    assert lc.needs_eager([1024] * 31 + [32768], lc.DecodeLayout(2)) == lc.skewed([1024] * 31 + [32768], 2)
    assert not lc.needs_eager([], chunked)


def test_tuned_launches_only_where_measured():
    """The launches measured on Hopper with bf16 K/V apply there only; everywhere else (and off
    CUDA) the earlier launches, which fit smaller cards' shared memory."""
    assert not lc.tuned(torch.device("cpu"), torch.bfloat16)
    old = lc.LaunchConfig(64, num_warps=4, num_stages=2)
    assert lc.decode_config(128, False) == old
    assert lc.decode_config(128, True) == lc.LaunchConfig(64, 4, 3)
    assert lc.decode_config(256, True) == lc.LaunchConfig(32, 4, 2)
    # a grid that fills the card many times over: two stages, tuned or not
    assert lc.decode_config(128, True, lc.MANY_DECODE_PROGRAMS - 1) == lc.LaunchConfig(64, 4, 3)
    assert lc.decode_config(128, True, lc.MANY_DECODE_PROGRAMS) == old
    assert lc.decode_config(128, False, lc.MANY_DECODE_PROGRAMS) == old
    assert lc.decode_config(128, True, 8, chunked=True) == old  # chunked graphs: two stages at any size
    assert lc.suffix_config(128, False) == old
    assert lc.suffix_config(128, True) == lc.LaunchConfig(32, 2, 4)
    assert lc.prefix_config(64, 128, False) == old
    assert lc.prefix_config(64, 128, True) == lc.LaunchConfig(128, 4, 1)
    assert lc.prefix_config(32, 128, True) == old  # a block height not measured
    assert lc.prefix_config(128, 128, True) == lc.LaunchConfig(64, 8, 2)  # 128 x 128 rows: 8 warps, as before
