"""The one-row Triton GEMV (``radixserve.kernels.gemv``) computes ``x @ W.T`` in every launch the
startup timing may pick, ragged rows and a K short of its power-of-two tile included. On CUDA, or
on CPU under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="needs triton")

from radixserve.kernels import gemv  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.triton_interpreter]


def test_the_launches_keep_a_thread_to_its_register_budget():
    assert gemv.configs(4096) == [(1, 4), (2, 4), (2, 8), (4, 8), (4, 16), (8, 16)]
    assert gemv.configs(14336) == [(1, 8), (1, 16), (2, 16)]  # a 16,384 tile: 8 warps at the least
    assert gemv.configs(1 << 16) == []  # one row would overflow 16 warps: cuBLAS only
    assert gemv.configs(576) == [(4, 4), (8, 4), (8, 8), (16, 8), (16, 16), (32, 16)]  # a 1,024 tile


@pytest.mark.parametrize("k", [576, 1000])
def test_every_launch_computes_x_times_w_transposed(k, device):
    gen = torch.Generator().manual_seed(k)
    n = 37  # no multiple of any BLOCK_N: the last program's rows are masked
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(1, k, generator=gen).to(device=device, dtype=dtype)
    w = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
    want = x.float() @ w.float().T
    for config in gemv.configs(k):
        got = gemv.gemv(x, w, config)
        assert got.shape == (1, n) and got.dtype == dtype
        error = ((got.float() - want).norm() / want.norm()).item()
        assert error < (1e-2 if dtype == torch.bfloat16 else 1e-5), (config, error)


def test_inputs_it_cannot_read_are_refused(device):
    w = torch.randn(8, 64, device=device)
    with pytest.raises(ValueError, match="gemv"):
        gemv.gemv(torch.randn(2, 64, device=device), w, (1, 4))  # two rows
    with pytest.raises(ValueError, match="gemv"):
        gemv.gemv(torch.randn(1, 64, device=device), w.T.contiguous().T, (1, 4))  # column-major weights
    with pytest.raises(ValueError, match="gemv"):
        gemv.gemv(torch.randn(1, 64, device=device, dtype=torch.float16), w, (1, 4))
