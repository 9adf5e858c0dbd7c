"""Which one-row form a timing picks, and that every form computes the same product (on CPU: the
forms are plain torch; the startup timing itself runs on CUDA, tests/gpu/test_linear_tuning_gpu.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radixserve.model.layers import Linear
from radixserve.model.linear_tuning import check_form, choose, one_row_forms


def test_a_form_must_beat_linear_by_the_margin():
    assert choose({"linear": 26.6, "mv": 9.1, "mm_t": 12.0}) == "mv"
    assert choose({"linear": 10.0, "mv": 9.8, "mm_t": 9.9}) == "linear"  # within 5%: not worth a change
    assert choose({"linear": 8.0, "mv": 9.0, "mm_t": 12.0}) == "linear"
    # summed over two row counts: faster in sum but slower at one end is not taken
    ends = ({"linear": 5.0, "few": 6.0}, {"linear": 20.0, "few": 12.0})
    assert choose({"linear": 25.0, "few": 18.0}, ends=ends) == "linear"
    assert choose({"linear": 25.0, "few": 18.0}, ends=({"linear": 5.0, "few": 5.0}, ends[1])) == "few"


@pytest.mark.parametrize("name", list(one_row_forms()))
def test_every_form_is_x_times_w_transposed(name):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 96, generator=gen), torch.randn(40, 96, generator=gen)
    got = one_row_forms()[name](x, w)
    assert got.shape == (1, 40)
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_a_linear_uses_its_small_row_forms_by_row_count():
    """One row takes the first range's form, 2 up to 16 rows the second's, up to 32 the third's
    (None: F.linear); zero rows (a step that samples nothing) and more rows than the last range
    take F.linear."""
    layer = Linear(8, 4, bias=False, dtype=torch.float32)
    layer.weight.data.copy_(torch.arange(32, dtype=torch.float32).view(4, 8) / 10)
    calls = []

    def form(name):
        def run(x, w):
            calls.append((name, x.shape[0]))
            return one_row_forms()[name](x, w)

        return run

    layer.small_rows = ((1, form("mv")), (16, form("mm_t")), (32, None), (64, form("mm_t")))
    for rows in (0, 1, 2, 16, 17, 32, 33, 64, 65):
        x = torch.randn(rows, 8)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))
    assert calls == [("mv", 1), ("mm_t", 2), ("mm_t", 16), ("mm_t", 33), ("mm_t", 64)]


def test_a_form_that_computes_something_else_is_refused():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, 64, generator=gen), torch.randn(40, 64, generator=gen)
    check_form(one_row_forms()["mm_t"], x, w)  # the same product: accepted
    check_form(lambda x, w: torch.zeros(3, 40), torch.zeros(3, 64), w)  # zero against zero
    for wrong in (
        lambda x, w: F.linear(x, w) * 1.05,  # 5% off
        lambda x, w: F.linear(x, w)[:, :39],  # a row short
        lambda x, w: F.linear(x, w) * float("nan"),
    ):
        with pytest.raises(ArithmeticError):
            check_form(wrong, x, w)
