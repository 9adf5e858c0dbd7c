"""Programmatic dependent launch (PDL; Hopper), off unless the engine turns it on (by default on
NVIDIA Hopper GPUs, ``engine.build._wants_pdl``).

A kernel launched with PDL may be placed on the GPU while the kernel before it in the stream is
still finishing, instead of after that kernel has completed and its writes have been flushed. Each
of our Triton kernels launched so waits (``griddepcontrol.wait``) in every program before its
first global read of anything a kernel writes, which returns once the previous kernel has
completed and its writes are visible. So results do not change; what changes is the gap between
kernels (~1.5 us each in a batch-1 decode step, about 0.45 ms of a 4.8 ms step on an H200), and
the one-row GEMV reads its weights during it. Each program signals
(``griddepcontrol.launch_dependents``) after its last store, so a following PDL kernel is placed
only once every program has reached its end (it may then wait on an SM while the last ones
finish). cuBLAS's GEMMs are launched as torch launches them: a kernel after one is placed when it
ends, as without PDL. Measured (H200, Llama-3.1-8B): a batch-1 step 4.43 -> 4.14 ms with the GEMV
(without it, 4.79 -> 4.77 ms: every projection was cuBLAS's).

The rule that keeps results exact: every program of a kernel launched with PDL calls
``gdc_wait()`` before its first global read of anything a kernel writes, and before any early
return. Then no such kernel can finish before the kernel ahead of it has, and by induction every
earlier kernel's writes are visible to it. Weights, which no kernel writes, may be read ahead of
the wait: the one-row GEMV (``gemv.py``) loads its weight tile there, while the kernel ahead
finishes.

Importing this module needs neither torch nor triton. The launch wrappers read ``enabled()`` when
they launch, so it must be set before CUDA graphs are captured (the engine does it at start-up).
"""

from __future__ import annotations

_enabled = False


def enable(on: bool) -> None:
    """Turns PDL launches on or off for every later launch of our Triton kernels."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def supported() -> bool:
    """Whether the installed Triton has the grid-dependency instructions (``gdc_wait``)."""
    from radixserve.kernels.grid_dependency import gdc_wait

    return gdc_wait is not None


_ON, _OFF = {"PDL": True, "launch_pdl": True}, {"PDL": False}


def launch_options() -> dict:
    """The launch keyword and constexpr of a kernel launch (``**`` them; not to be changed):
    ``PDL`` in the kernel, ``launch_pdl`` for Triton's launcher."""
    return _ON if _enabled else _OFF
