"""Host lists to device tensors without making the host wait for the GPU.

A host-to-device copy from pageable memory makes the host wait until every kernel already queued
on the stream has finished (CUDA stages pageable memory behind a stream sync). One such copy per
step undoes the overlap schedule: the CPU can no longer plan step N+1 while the GPU runs step N.
Every per-step upload therefore goes through pinned memory and ``non_blocking`` copies (PyTorch's
caching host allocator keeps the pinned source alive until its copy has run).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


def pinned(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a host tensor, pinned when ``device`` is CUDA (for APIs that take host arrays
    and copy them to the device themselves, like FlashInfer's ``plan``)."""
    device = torch.device(device)
    host = torch.tensor(values, dtype=dtype)
    return host.pin_memory() if device.type == "cuda" else host


def to_device(values: Sequence, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``values`` (a list, or nested lists) as a tensor on ``device``; on CUDA one asynchronous copy
    from pinned memory, so the host does not wait for queued GPU work."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return pinned(values, dtype, device).to(device, non_blocking=True)


def move(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``, through pinned memory on CUDA (see ``to_device``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


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
    uploaded = to_device(flat, device, dtype)
    return [uploaded[start : start + len(part)] for start, part in zip(starts, parts)]
