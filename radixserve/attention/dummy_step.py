"""Inputs of a tiny decode step in the dummy KV slot 0, for compiling kernels before requests come.

Triton compiles one variant per pointer dtype, 16-byte pointer alignment and constexpr value, so
the tensors here have the layouts real steps have: q, k and v as views of one fused qkv
projection row, int64 ``qo_indptr``/``kv_indptr``/``out_slots`` (the runner's upload) and int32
``kv_slots`` (the slot table's gather). Two sequences, one query row and two keys each, every key
in slot 0 (never handed out to a request), so running kernels on them changes nothing real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixserve.attention.upload import upload_aligned


@dataclass
class DummyStep:
    q: torch.Tensor  # [2, Hq, D], a view of the qkv row
    k: torch.Tensor  # [2, Hkv, D], a view
    v: torch.Tensor  # [2, Hkv, D], a view
    qo_indptr: torch.Tensor  # [3] int64
    kv_indptr: torch.Tensor  # [3] int64
    out_slots: torch.Tensor  # [2] int64, both 0
    kv_slots: torch.Tensor  # [4] int32, all 0


def dummy_step(kv_pool, num_q_heads: int) -> DummyStep:
    device, num_kv_heads, head_dim = kv_pool.device, kv_pool.num_kv_heads, kv_pool.head_dim
    sizes = [num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = torch.zeros(2, sum(sizes), dtype=kv_pool.dtype, device=device)
    q, k, v = (part.view(2, -1, head_dim) for part in qkv.split(sizes, dim=-1))
    qo_indptr, kv_indptr, out_slots = upload_aligned(([0, 1, 2], [0, 2, 4], [0, 0]), device, torch.int64)
    (kv_slots,) = upload_aligned(([0, 0, 0, 0],), device, torch.int32)
    return DummyStep(q, k, v, qo_indptr, kv_indptr, out_slots, kv_slots)
