"""Which padded token counts the piecewise CUDA graphs are captured for, and the flag's checks (CPU).
The graphs themselves are checked against the eager model on a GPU (tests/gpu/test_piecewise_graph.py)."""

from __future__ import annotations

import pytest

from radixserve.runner.piecewise_graph import token_buckets


def test_buckets_grow_and_end_at_the_limit():
    assert token_buckets(1024) == [16, 32, 64, 128, 256, 384, 512, 768, 1024]
    assert token_buckets(600) == [16, 32, 64, 128, 256, 384, 512, 600]
    assert token_buckets(10) == [10]


@pytest.mark.parametrize("limit", [16, 100, 1000, 2048])
def test_every_step_up_to_the_limit_has_a_bucket_at_most_twice_its_size(limit):
    sizes = token_buckets(limit)
    for tokens in range(1, limit + 1):
        size = next(s for s in sizes if s >= tokens)
        assert size <= max(2 * tokens, 16)


@pytest.mark.parametrize(
    "flag, field, value",
    [
        ("piecewise-cuda-graph-max-tokens", "piecewise_cuda_graph_max_tokens", -1),
        ("mixed-decode-split", "mixed_decode_split", -2),  # -1 is auto
    ],
)
def test_a_negative_count_is_refused_before_the_model_loads(flag, field, value):
    from radixserve.config import ServerArgs
    from radixserve.engine.build import build_engine_parts

    args = ServerArgs(model_path="/nonexistent", **{field: value})  # refused before the path is read
    with pytest.raises(ValueError, match=f"--{flag} must be >= 0"):
        build_engine_parts(args)
