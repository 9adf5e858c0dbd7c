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


@pytest.mark.parametrize(
    "major, hip, supported, want",
    [
        (9, None, True, True),  # Hopper with a Triton that has gdc_wait: on by default
        (9, None, False, False),  # a Triton without it
        (8, None, True, False),  # Ampere
        (10, None, True, False),  # Blackwell: not measured, not on
        (12, None, True, False),  # SM 12.0: graph capture of PDL launches has failed there
        (9, "6.2", True, False),  # ROCm (MI200/MI300 report major 9 through torch.cuda)
    ],
)
def test_the_default_is_on_for_nvidia_hopper_only(major, hip, supported, want, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(pdl, "supported", lambda: supported)
    cuda = torch.device("cuda")
    assert _wants_pdl(ServerArgs(), cuda) is want
    assert _wants_pdl(ServerArgs(disable_pdl=True), cuda) is False
    if want:
        assert _wants_pdl(ServerArgs(enable_pdl=True), cuda) is True
    else:
        with pytest.raises(ValueError, match="--enable-pdl needs"):
            _wants_pdl(ServerArgs(enable_pdl=True), cuda)
