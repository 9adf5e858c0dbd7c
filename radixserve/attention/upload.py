"""Small index tensors for the kernels: one host-to-device copy, every part 16-byte aligned."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


def upload_aligned(
    parts: Sequence[Sequence[int]], device: torch.device, dtype: torch.dtype = torch.int64
) -> list[torch.Tensor]:
    """``parts`` (lists of ints) as device tensors of one host-to-device copy, each starting on a
    16-byte boundary. Triton specializes kernels on their pointers' 16-byte alignment: views at
    arbitrary offsets of one buffer would compile (and stall on) a variant per alignment pattern."""
    per_row = 16 // dtype.itemsize
    flat: list[int] = []
    starts = []
    for part in parts:
        starts.append(len(flat))
        flat.extend(part)
        flat.extend(itertools.repeat(0, -len(flat) % per_row))
    host = torch.tensor(flat, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    uploaded = host.to(device, non_blocking=True)
    return [uploaded[start : start + len(part)] for start, part in zip(starts, parts)]
