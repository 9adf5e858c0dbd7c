"""The few-row Triton projection (``radixserve.kernels.few_rows``) computes ``x @ W.T`` for 2 to 64
rows in every launch the startup timing may pick, with K split or not, ragged rows and a K that is
no multiple of a block; splits add themselves up in split order (the same bits run after run) and
leave their counters at zero. On CUDA, or on CPU under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="needs triton")

from radixserve.kernels import few_rows  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.triton_interpreter]


def test_short_shapes_split_k_until_every_sm_has_two_programs():
    split = few_rows.split_count
    assert split(4096, 4096, 16, 64, 128, sms=132) == 8  # 64 tiles of rows: 512 programs, at most 8 splits
    assert split(4096, 4096, 32, 64, 128, sms=132) == 4  # more rows: partials at most 1/8 of the weights
    assert split(4096, 4096, 64, 64, 128, sms=132) == 2
    assert split(28672, 4096, 16, 64, 128, sms=132) == 1  # 448 tiles already
    assert split(6144, 4096, 16, 128, 128, sms=132) == 8
    assert split(4096, 8192, 16, 64, 4096, sms=132) == 2  # a split keeps BLOCK_K keys at least
    assert few_rows.row_block(2) == 16 and few_rows.row_block(17) == 32 and few_rows.row_block(64) == 64


@pytest.mark.parametrize("k", [1100, 1536, 3584, 4100])
def test_no_split_is_launched_empty(k):
    for config in few_rows.CONFIGS:
        form = few_rows.FewRows(64, k, config, torch.device("cpu"), sms=132)
        for splits, split_len in form.splits.values():
            assert split_len % config[1] == 0 and (splits - 1) * split_len < k <= splits * split_len


@pytest.mark.parametrize("config", few_rows.CONFIGS)
@pytest.mark.parametrize("sms", [1, 64])  # 64 SMs: K split in every row block; 1: never
def test_every_launch_computes_x_times_w_transposed(config, sms, device):
    gen = torch.Generator().manual_seed(sum(config) + sms)
    n, k = 200, 4100  # no multiple of BLOCK_N; K no multiple of BLOCK_K
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    w = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
    form = few_rows.FewRows(n, k, config, device, sms=sms)
    assert all((splits > 1) == (sms > 1) for splits, _ in form.splits.values()), form.splits
    for m in (2, 17, 64):  # each row block: 16, 32, 64
        x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        want = x.float() @ w.float().T
        got = form(x, w)
        assert got.shape == (m, n) and got.dtype == dtype
        error = ((got.float() - want).norm() / want.norm()).item()
        assert error < (1e-2 if dtype == torch.bfloat16 else 1e-5), (config, m, error)
        assert torch.equal(form(x, w), got)  # the splits' sum in split order: the same bits again
        assert not form.counters.any()  # every counter back at zero for the next launch
    x = torch.randn(8, 2 * k, generator=gen).to(device=device, dtype=dtype)[:, ::2]  # rows not contiguous
    torch.testing.assert_close(form(x, w).float(), x.float() @ w.float().T, rtol=2e-2, atol=2e-2)


def test_inputs_it_cannot_read_are_refused(device):
    w = torch.randn(70, 64, device=device)
    form = few_rows.FewRows(70, 64, few_rows.CONFIGS[0], device, sms=1)
    with pytest.raises(ValueError, match="few_rows"):
        form(torch.randn(65, 64, device=device), w)  # more rows than the largest block
    with pytest.raises(ValueError, match="few_rows"):
        form(torch.randn(4, 64, device=device), w.T.contiguous().T)  # column-major weights
    with pytest.raises(ValueError, match="few_rows"):
        form(torch.randn(4, 64, device=device), torch.randn(80, 64, device=device))  # not the shape it was made for
