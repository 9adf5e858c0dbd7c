"""oneDNN-prepacked CPU linears compute the same thing as the plain path."""

from __future__ import annotations

import pytest
import torch

from radixserve.model.layers import Linear, prepack_cpu_linears


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_prepacked_linear_matches_plain(bias, dtype, tol, rows):
    torch.manual_seed(rows)
    layer = Linear(48, 80, bias, dtype)
    with torch.no_grad():
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    x = torch.randn(rows, 48, dtype=dtype)
    plain = layer(x)
    assert prepack_cpu_linears(layer) == 1 and layer.packed is not None
    packed = layer(x)
    assert packed.dtype == dtype and packed.shape == (rows, 80)
    torch.testing.assert_close(packed.float(), plain.float(), rtol=tol, atol=tol * 10)


def test_non_contiguous_input_is_handled():
    layer = Linear(16, 8, False, torch.float32)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(16, 10).t()  # [10, 16], non-contiguous
    expected = layer(x)
    prepack_cpu_linears(layer)
    torch.testing.assert_close(layer(x), expected)
