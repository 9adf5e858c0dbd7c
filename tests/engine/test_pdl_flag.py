"""Programmatic dependent launch is a Hopper feature, on there by default: ``--enable-pdl``
anywhere else makes the engine refuse to start with a clear message, as do both flags at once; off,
it changes no launch."""

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
    assert _wants_pdl(ServerArgs(disable_pdl=True), torch.device("cpu")) is False


def test_both_pdl_flags_at_once_are_refused():
    with pytest.raises(ValueError, match="contradict"):
        _wants_pdl(ServerArgs(enable_pdl=True, disable_pdl=True), torch.device("cpu"))


def test_the_switch_sets_the_launch_options():
    try:
        pdl.enable(True)
        assert pdl.enabled() and pdl.launch_options() == {"PDL": True, "launch_pdl": True}
    finally:
        pdl.enable(False)
    assert not pdl.enabled() and pdl.launch_options() == {"PDL": False}
