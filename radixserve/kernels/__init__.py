"""Fused Triton kernels for the model's elementwise work (RMSNorm, residual add, RoPE, SiLU-and-mul).

Importing this package needs neither torch nor triton: ``fused_ops()`` imports the kernels on first
use and returns None where triton does not import, so callers keep their torch path as fallback.
``RADIXSERVE_FUSED_KERNELS=0`` turns the fused path off (for A/B runs against the torch path).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType


@functools.cache
def fused_ops() -> ModuleType | None:
    """``radixserve.kernels.fused`` if triton is importable and not disabled, else None (checked once)."""
    if os.environ.get("RADIXSERVE_FUSED_KERNELS") == "0" or importlib.util.find_spec("triton") is None:
        return None
    try:
        from radixserve.kernels import fused
    except ImportError:
        return None
    return fused
