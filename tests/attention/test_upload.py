"""Host lists to device tensors (attention/upload.py): values, dtypes and alignment on CPU; the
"does not wait for the GPU" half is checked on CUDA in tests/gpu/test_host_sync.py."""

from __future__ import annotations

import torch

from radixserve.attention.upload import move, pinned, to_device, upload_aligned


def test_to_device_keeps_values_and_dtype():
    cpu = torch.device("cpu")
    ints = to_device([[1, 2], [3, 4]], cpu)
    assert ints.dtype == torch.int64 and ints.tolist() == [[1, 2], [3, 4]]
    floats = to_device([0.5, 2.0], "cpu", torch.float32)
    assert floats.dtype == torch.float32 and floats.tolist() == [0.5, 2.0]
    assert to_device([], cpu).numel() == 0


def test_pinned_and_move_on_a_cpu_device_are_plain_host_tensors():
    host = pinned([0, 3, 7], torch.int32, torch.device("cpu"))
    assert host.dtype == torch.int32 and host.tolist() == [0, 3, 7] and not host.is_pinned()
    moved = move(torch.arange(5), "cpu")
    assert moved.tolist() == [0, 1, 2, 3, 4]


def test_upload_aligned_parts_start_on_16_byte_boundaries():
    parts = ([1, 2, 3], [], [4], [5, 6, 7, 8, 9])
    for dtype in (torch.int64, torch.int32):
        uploaded = upload_aligned(parts, torch.device("cpu"), dtype)
        assert [t.tolist() for t in uploaded] == [list(p) for p in parts]
        assert all(t.data_ptr() % 16 == 0 for t in uploaded)
