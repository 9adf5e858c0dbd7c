"""upload_aligned (attention/upload.py): values, dtypes and 16-byte alignment of every part."""

from __future__ import annotations

import torch

from radixserve.attention.upload import upload_aligned


def test_upload_aligned_parts_start_on_16_byte_boundaries():
    parts = ([1, 2, 3], [], [4], [5, 6, 7, 8, 9])
    for dtype in (torch.int64, torch.int32):
        uploaded = upload_aligned(parts, torch.device("cpu"), dtype)
        assert [t.tolist() for t in uploaded] == [list(p) for p in parts]
        assert all(t.dtype == dtype for t in uploaded)
        assert all(t.data_ptr() % 16 == 0 for t in uploaded)
