"""The Triton GEMV of ``bench.gemv_probe`` computes ``x @ w.T`` for a few rows (every block shape
it times, ragged edges included). On CUDA, or on CPU under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="needs triton")

from bench.gemv_probe import CONFIGS, ROW_CONFIGS, gemv, gemv_row  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.triton_interpreter]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_matches_the_matmul(config, m, device):
    gen = torch.Generator().manual_seed(m)
    n, k = 70, 300  # neither a multiple of any block
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    w = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
    want = x.float() @ w.float().T
    got = gemv(x, w, config).float()
    assert got.shape == (m, n)
    assert ((got - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.parametrize("config", ROW_CONFIGS)
def test_one_row_gemv_matches_the_matmul(config, device):
    """Split-K shares that end mid-block and a K that is no multiple of any block."""
    gen = torch.Generator().manual_seed(7)
    n, k = 70, 1300
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(1, k, generator=gen).to(device=device, dtype=dtype)
    w = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
    want = x.float() @ w.float().T
    got = gemv_row(x, w, config).float()
    assert got.shape == (1, n)
    assert ((got - want).norm() / want.norm()).item() < 1e-2
