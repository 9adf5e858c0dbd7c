"""``--enable-pdl`` compiles our Triton kernels with ``griddepcontrol`` waits and signals and
launches them with programmatic dependent launch. Triton's interpreter cannot run those
instructions, so on CPU each kernel is launched with PDL off under the interpreter, its recorded
launch is switched to PDL, and the variant is compiled for sm_90 (``compile_check``). On a GPU,
``test_engine_gpu`` runs them."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton", reason="needs triton")

from tests.gpu import compile_check  # noqa: E402
from tests.gpu.conftest import interpreting  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.triton_interpreter]


def _launch_every_pdl_kernel() -> None:
    from radixserve.attention import triton_decode
    from radixserve.kernels import fused

    dtype, hq, hkv, d = torch.bfloat16, 8, 2, 64
    x, residual, weight = torch.randn(2, hq * d).to(dtype), torch.randn(2, hq * d).to(dtype), torch.ones(hq * d)
    fused.rms_norm(x, weight.to(dtype), 1e-5)
    fused.fused_add_rms_norm(x, residual, weight.to(dtype), 1e-5)
    qkv = torch.randn(2, (hq + 2 * hkv) * d).to(dtype)
    q, k, v = (t.view(2, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=1))
    k_pool, v_pool = torch.zeros(8, hkv, d, dtype=dtype), torch.zeros(8, hkv, d, dtype=dtype)
    cos, sin = torch.ones(4, d // 2), torch.zeros(4, d // 2)
    fused.rope_inplace(torch.tensor([1, 2]), q, k, cos, sin, store=(v, k_pool, v_pool, torch.tensor([1, 2])))
    fused.silu_and_mul(torch.randn(2, 2 * hq * d).to(dtype))
    indptr = torch.tensor([0, 1, 2])
    slots = torch.tensor([1, 2], dtype=torch.int32)
    counters = torch.zeros(2 * hkv, dtype=torch.int32)
    for splits, chunk_len in ((1, 0), (2, 0), (2, 64)):
        triton_decode.decode_attention(
            q.contiguous(), k_pool, v_pool, torch.empty(2, hq, d, dtype=dtype), indptr, indptr, slots, None, 2,
            splits, d**-0.5, counters=counters, chunk_len=chunk_len,
        )  # fmt: skip


def test_every_kernel_compiles_for_sm90_with_programmatic_dependent_launch(device):
    if device.type == "cuda" or not interpreting():
        pytest.skip("on CPU under the interpreter only (test_engine_gpu launches them on a GPU)")
    from bench.harness import triton_compile

    records: list[str] = []
    restore = triton_compile.install(records)
    try:
        _launch_every_pdl_kernel()
    finally:
        restore()
    switched = []
    for line in set(records):
        record = json.loads(line)
        if "PDL" not in record.get("args", {}):
            continue
        record["args"]["PDL"] = {"constexpr": {"value": True}}
        record["options"]["launch_pdl"] = True
        switched.append(json.dumps(record, sort_keys=True))
    kernels = {json.loads(line)["name"] for line in switched}
    assert kernels == {"_rms_norm_kernel", "_rope_kernel", "_silu_and_mul_kernel", "_decode_split_kernel"}
    count, failures = compile_check.check(switched)
    assert count >= 6 and not failures, failures
