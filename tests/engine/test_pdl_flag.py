"""``--enable-pdl``: programmatic dependent launch is a Hopper feature; asked for anywhere else the
engine refuses to start with a clear message, and left off it changes no launch."""

from __future__ import annotations

import pytest
import torch

from radixserve.config import ServerArgs
from radixserve.engine.build import _wants_pdl
from radixserve.kernels import pdl


def test_pdl_on_a_cpu_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="--enable-pdl needs a Hopper GPU"):
        _wants_pdl(ServerArgs(enable_pdl=True), torch.device("cpu"))
    assert _wants_pdl(ServerArgs(), torch.device("cpu")) is False


def test_the_switch_sets_the_launch_options():
    try:
        pdl.enable(True)
        assert pdl.enabled() and pdl.launch_options() == {"PDL": True, "launch_pdl": True}
    finally:
        pdl.enable(False)
    assert not pdl.enabled() and pdl.launch_options() == {"PDL": False}
