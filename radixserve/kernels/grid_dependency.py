"""The grid-dependency instructions of programmatic dependent launch (``pdl.py``), which our Triton
kernels call under ``if PDL:``. A Triton without them keeps PDL off (``pdl.supported``): the names
are then None, referenced only in branches such a Triton never compiles."""

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None

__all__ = ["gdc_launch_dependents", "gdc_wait"]
