"""The startup timing of one-row projection forms on CUDA: it times every form on every weight
shape, and whatever it picks computes ``x @ W.T`` (bf16 rounding aside)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radixserve.model.layers import Linear
from radixserve.model.linear_tuning import one_row_forms, tune_one_row_linears

pytestmark = pytest.mark.gpu


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
    times = tune_one_row_linears(layers, Linear)
    assert set(times) == {(4096, 4096), (6144, 4096)}
    assert all(set(t) == set(one_row_forms(k)) and min(t.values()) > 0 for (_, k), t in times.items()), times
    if importlib.util.find_spec("triton") is not None:  # the GEMV's launches were timed too
        assert all(any(name.startswith("gemv ") for name in t) for t in times.values()), times
    assert layers[-1].one_row is None
    x = torch.randn(1, 4096, dtype=torch.bfloat16, device=device)
    for layer in layers[:-1]:
        want = F.linear(x.float(), layer.weight.float())
        got = layer(x).float()
        assert got.shape == (1, layer.weight.shape[0])
        assert ((got - want).norm() / want.norm()).item() < 1e-2
