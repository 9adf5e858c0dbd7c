"""The startup timing of one-row projection forms on CUDA: it times every form on every weight
shape, and whatever it picks computes ``x @ W.T`` (bf16 rounding aside)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radixserve.model.layers import Linear
from radixserve.model.linear_tuning import one_row_forms, tune_small_batch_linears

pytestmark = pytest.mark.gpu

try:
    from radixserve.kernels import few_rows
except ImportError:  # no triton: F.linear's forms only
    few_rows = None


def test_every_shape_is_timed_and_the_chosen_forms_compute_the_same_product(device):
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    layers = nn.ModuleList(
        [Linear(4096, 4096, False, torch.bfloat16, device) for _ in range(4)]
        + [Linear(4096, 6144, False, torch.bfloat16, device) for _ in range(4)]
        + [Linear(4096, 512, True, torch.bfloat16, device)]  # with a bias: left to F.linear
    )
    for layer in layers:
        nn.init.normal_(layer.weight, std=0.02)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    times = tune_small_batch_linears(layers, Linear)
    triton = importlib.util.find_spec("triton") is not None
    rows = (1, *few_rows.ROW_BLOCKS) if triton else (1,)
    assert set(times) == {(n, 4096, r) for n in (4096, 6144) for r in rows}, set(times)
    for (_, k, r), t in times.items():
        assert min(t.values()) > 0 and "linear" in t, t
        if r == 1:
            assert set(t) == set(one_row_forms(k)), t
            assert not triton or any(name.startswith("gemv ") for name in t), t  # the GEMV's launches
        else:
            assert len(t) == 1 + len(few_rows.CONFIGS) and all(n.startswith("few ") for n in t if n != "linear"), t
    assert layers[-1].small_rows == ()
    assert all(tuple(most for most, _ in layer.small_rows) == rows for layer in layers[:-1])
    for m in (1, 2, 16, 17, 40, 64, 65):  # every bucket, and past the last (F.linear)
        x = torch.randn(m, 4096, dtype=torch.bfloat16, device=device)
        for layer in layers[:-1]:
            want = F.linear(x.float(), layer.weight.float())
            got = layer(x).float()
            assert got.shape == (m, layer.weight.shape[0])
            assert ((got - want).norm() / want.norm()).item() < 1e-2, m
