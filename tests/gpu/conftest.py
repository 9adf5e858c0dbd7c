"""GPU tests: run on CUDA; without CUDA the root conftest skips them (they carry the ``gpu``
marker, and ``gpu`` is this directory's keyword) -- except tests marked ``triton_interpreter``
when ``TRITON_INTERPRET=1`` (or ``RADIXSERVE_TRITON_INTERPRET=1``) is set: Triton's interpreter
then runs their kernels on CPU tensors, slowly, so such tests use small sizes off CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.gpu import compile_check

HERE = Path(__file__).resolve().parent
ROOT_SKIP_REASON = "needs a CUDA GPU"  # tests/conftest.py


def interpreting() -> bool:
    return "1" in (os.environ.get("TRITON_INTERPRET"), os.environ.get("RADIXSERVE_TRITON_INTERPRET"))


def pytest_configure(config):
    config.addinivalue_line("markers", "triton_interpreter: also runs on CPU under TRITON_INTERPRET=1")
    if os.environ.get("RADIXSERVE_TRITON_INTERPRET") == "1":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the Triton kernel modules are imported
    if interpreting():
        _upcast_bf16_dot_operands()
        _round_bf16_casts_to_nearest_even()
        if compile_check.enabled():
            compile_check.install(_LAUNCHES)


_LAUNCHES: list[str] = []  # the interpreted launches, for ``compile_check``


def pytest_sessionfinish(session, exitstatus):
    if not (interpreting() and compile_check.enabled()):
        return
    count, failures = compile_check.check(_LAUNCHES)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"compile check: {count} distinct interpreted launches compiled for sm_90, {len(failures)} failed"]
    for line in [*lines, *failures]:
        if reporter is not None:
            reporter.write_line(line)
    if failures:
        session.exitstatus = 1


def _upcast_bf16_dot_operands() -> None:
    """Triton's interpreter (3.6) holds bf16 as uint16 bits and feeds those bits to ``np.matmul``
    in ``tl.dot``; convert bf16 operands to float32 first. (The interpreter also needs numpy < 2.4,
    which refuses its ``int()`` of one-element arrays.)"""
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    create_dot = InterpreterBuilder.create_dot

    def upcast_dot(self, a, b, d, *args):
        a = self.cast_impl(a, tl.float32) if a.dtype.scalar == tl.bfloat16 else a
        b = self.cast_impl(b, tl.float32) if b.dtype.scalar == tl.bfloat16 else b
        return create_dot(self, a, b, d, *args)

    InterpreterBuilder.create_dot = upcast_dot


def _round_bf16_casts_to_nearest_even() -> None:
    """The interpreter (3.6) truncates float32 -> bf16 casts, the GPU (and torch) round them to
    nearest even; round like the GPU, so that interpreted bf16 results match CUDA's to the bit."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    cast_impl = InterpreterBuilder.cast_impl

    def rounding_cast(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return cast_impl(self, src, dst_type)
        values = np.asarray(src.data, dtype=np.float32)
        bits = values.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return TensorHandle(np.where(np.isnan(values), np.uint16(0x7FC0), rounded), tl.bfloat16)

    InterpreterBuilder.cast_impl = rounding_cast


@pytest.hookimpl(trylast=True)  # after the root conftest has skipped every gpu test
def pytest_collection_modifyitems(config, items):
    if not interpreting() or torch.cuda.is_available():
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents and item.get_closest_marker("triton_interpreter"):
            item.own_markers[:] = [
                mark
                for mark in item.own_markers
                if not (mark.name == "skip" and mark.kwargs.get("reason") == ROOT_SKIP_REASON)
            ]


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
