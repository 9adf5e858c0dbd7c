"""Programmatic dependent launch (on by default on Hopper) compiles our Triton kernels with
``griddepcontrol`` waits and signals and launches them so. Triton's interpreter cannot run those
instructions, so on CPU each kernel is launched with PDL off under the interpreter, its recorded
launch is switched to PDL, and the variant is compiled for sm_90 (``compile_check``), its wait
ahead of its first global load (the GEMV's ahead of its last: it reads weights before it). On a Hopper GPU a layer chain of them runs with PDL on and off,
eagerly and replayed from a CUDA graph, to the same bits (``test_engine_gpu`` runs the engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="needs triton")

from bench.kernel_resources import launch_engine_kernels  # noqa: E402
from tests.gpu import compile_check  # noqa: E402
from tests.gpu.conftest import interpreting  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.triton_interpreter]


def test_every_kernel_compiles_for_sm90_with_programmatic_dependent_launch(device):
    if device.type == "cuda" or not interpreting():
        pytest.skip("on CPU under the interpreter only (test_engine_gpu launches them on a GPU)")
    from bench.harness import triton_compile

    records: list[str] = []
    restore = triton_compile.install(records)
    try:
        launch_engine_kernels(8, 2, 64)  # the engine's launches, as ``bench.kernel_resources`` records them
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
    assert kernels == {
        "_rms_norm_kernel",
        "_rope_kernel",
        "_silu_and_mul_kernel",
        "_decode_split_kernel",
        "_gemv_kernel",
        "_few_rows_kernel",
    }
    count, failures = compile_check.check(switched)
    assert count and not failures, failures
    # each compiled variant waits before its first global load and signals its dependents; the GEMV
    # reads its weights (which no kernel writes) ahead of the wait, so it waits before its last load
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RADIXSERVE_TRITON_INTERPRET")}
    script = (
        "import json, sys\n"
        "from bench.harness.triton_compile import compile_record\n"
        "PREFETCH = {'_gemv_kernel'}\n"
        "for line in json.loads(sys.stdin.read()):\n"
        "    kernel = compile_record(json.loads(line))\n"
        "    ptx = kernel.asm['ptx']\n"
        "    wait = ptx.find('griddepcontrol.wait')\n"
        "    # global reads: plain loads, and the asynchronous copies of a pipelined loop\n"
        "    found = [ptx.find(op) for op in ('ld.global', 'cp.async.') if op in ptx]\n"
        "    first = min(found, default=-1)\n"
        "    last = max(ptx.rfind('ld.global'), ptx.rfind('cp.async.'))\n"
        "    assert kernel.metadata.launch_pdl, kernel.name\n"
        "    if kernel.name in PREFETCH:  # the weights ahead of the wait, x after it\n"
        "        assert 0 <= first < wait < last, (kernel.name, first, wait, last)\n"
        "    else:\n"
        "        assert 0 <= wait < first, (kernel.name, wait, first)\n"
        "    assert 'griddepcontrol.launch_dependents' in ptx, kernel.name\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(switched), cwd=compile_check.ROOT, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


_FEW = {}  # a few-row launch per weight shape, with its split counters (K split up to 8 ways)


def _layers(x, weights, pool, batch, counters, positions, cos, sin, shape):
    """A decode step's chain of our kernels, layer after layer (GEMMs by torch in between)."""
    from radixserve.attention import triton_decode
    from radixserve.kernels import few_rows, fused, gemv

    hq, hkv, d = shape
    residual = torch.zeros_like(x)

    def project(a, w):  # one row: the Triton GEMV (its weights read ahead of its wait); more: few_rows
        if len(a) == 1:
            return gemv.gemv(a, w, gemv.configs(w.shape[1])[-1])
        if w.shape not in _FEW:  # made outside any capture, as the engine's tuning makes them
            _FEW[w.shape] = few_rows.FewRows(*w.shape, few_rows.CONFIGS[0], w.device, sms=64)
        return _FEW[w.shape](a, w)

    for layer, (norm, qkv_w, up_w, down_w) in enumerate(weights):
        h, residual = fused.fused_add_rms_norm(x, residual, norm, 1e-5)
        q, k, v = (t.view(len(x), -1, d) for t in project(h, qkv_w).split([hq * d, hkv * d, hkv * d], dim=1))
        k_pool, v_pool = pool[layer]
        fused.rope_inplace(positions, q, k, cos, sin, store=(v, k_pool, v_pool, batch["out_slots"]))
        out = torch.empty(len(x), hq, d, dtype=x.dtype, device=x.device)
        triton_decode.decode_attention(
            q, k_pool, v_pool, out, batch["qo_indptr"], batch["kv_indptr"], batch["kv_slots"], None, len(x), 4,
            d**-0.5, counters=counters,
        )  # fmt: skip
        x = project(fused.silu_and_mul(project(out.view(len(x), -1), up_w)), down_w)
    return x


@pytest.mark.parametrize("lens", [[100, 300, 37, 1000], [777]])
def test_a_layer_chain_gives_the_same_bits_with_programmatic_dependent_launch(lens, device):
    """Norm, projection, RoPE with the K/V store, the self-merging decode and SiLU over 4 layers:
    PDL on, eager and replayed 200 times from a CUDA graph, gives the bits of PDL off. The
    projections are the Triton GEMV's at one sequence, the few-row kernel's (K split, the splits
    adding themselves up) at four."""
    if device.type != "cuda" or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("programmatic dependent launch: Hopper only")
    from radixserve.attention import triton_decode
    from radixserve.kernels import pdl

    gen = torch.Generator(device="cpu").manual_seed(0)
    hq, hkv, d, hidden, inter, layers = 8, 2, 64, 512, 256, 4
    dtype = torch.bfloat16

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.1).to(device=device, dtype=dtype)

    weights = [(rand(hidden) + 1, rand((hq + 2 * hkv) * d, hidden), rand(2 * inter, hidden), rand(hidden, inter))]
    weights *= layers
    slots = sum(lens) + 1
    pool = [(rand(slots, hkv, d), rand(slots, hkv, d)) for _ in range(layers)]
    starts = [1 + sum(lens[:i]) for i in range(len(lens))]
    batch = {
        "qo_indptr": torch.arange(len(lens) + 1, device=device),
        "kv_indptr": torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=device),
        "kv_slots": torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens)]).to(device, torch.int32),
        "out_slots": torch.tensor([s + n - 1 for s, n in zip(starts, lens)], device=device),
    }
    positions = torch.tensor([n - 1 for n in lens], device=device)
    cos = torch.rand(1024, d // 2, generator=gen).to(device)
    sin = torch.rand(1024, d // 2, generator=gen).to(device)
    counters = torch.zeros(len(lens) * hkv, dtype=torch.int32, device=device)
    x = rand(len(lens), hidden)
    args = (x, weights, pool, batch, counters, positions, cos, sin, (hq, hkv, d))
    want = _layers(*args)
    try:
        pdl.enable(True)
        assert torch.equal(_layers(*args), want)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = _layers(*args)
        for _ in range(200):
            graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want)
        assert not counters.any() and not any(form.counters.any() for form in _FEW.values())
        from radixserve.kernels import few_rows, gemv

        projections = gemv._gemv_kernel if len(lens) == 1 else few_rows._few_rows_kernel
        for launched in (triton_decode._decode_split_kernel, projections):
            compiled = launched.device_caches.values()
            assert any(kernel.metadata.launch_pdl for cache in compiled for kernel in cache[0].values())
    finally:
        pdl.enable(False)
