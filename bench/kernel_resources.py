"""Registers, spills and shared memory of the engine's Triton kernels on sm_90, read without a GPU.

How many programs of a kernel an SM holds at once is set by its registers a thread and its shared
memory a program, and both are fixed at compile time. This reads them on any machine with triton
installed, no GPU needed. The engine's launches run on tiny CPU inputs under Triton's
interpreter; each is recorded specialised as it would be on a GPU
(``bench.harness.triton_compile``) and compiled for sm_90, and the wheel's ``cuobjdump`` reads its
cubin. The launches are the Triton backend's warmup (the decode kernels in both launch forms,
their merge, the extend kernel, the K/V store, the shared-prefix cascade), the chunked decode in
two and three stages, the fused RMSNorm / RoPE / SiLU kernels, the one-row GEMV in each launch
the startup tuning tries (K the hidden size, and 3.5 times it: Llama-3.1-8B's down projection), and
the few-row projection in each of its launches, row blocks and with K split or not, at
Llama-3.1-8B's attention shape by default. Timings still need the GPU (``bench.cascade_kernels``). The tenth session used
this to find that the chunked decode took 164 registers in two stages (three programs an SM),
against 114 for one split (four).

  python -m bench.kernel_resources                          # 32 q / 8 KV heads, head_dim 128, bf16
  python -m bench.kernel_resources --q-heads 9 --kv-heads 3 --head-dim 64   # the embedded model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# an H100 / H200 SM: four sub-partitions of 16K registers, shared memory, resident threads and programs
SM_PARTITIONS, PARTITION_REGISTERS = 4, 16384
SM_SHARED_BYTES, SM_THREADS, SM_PROGRAMS = 228 * 1024, 2048, 32
BLOCK_SHARED_RESERVED = 1024  # the driver's reservation a program


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--record", help=argparse.SUPPRESS)  # the interpreted child writes its launches here
    return parser.parse_args(argv)


def record_launches(args) -> list[str]:
    """Runs the launches under the interpreter (this module's ``--record`` child) and returns them."""
    env = os.environ | {"TRITON_INTERPRET": "1"}
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "launches.json")
        command = [sys.executable, "-m", "bench.kernel_resources", "--record", path]
        command += ["--q-heads", str(args.q_heads), "--kv-heads", str(args.kv_heads), "--head-dim", str(args.head_dim)]
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        return json.loads(Path(path).read_text())


def launch_engine_kernels(hq: int, hkv: int, d: int) -> None:
    """The engine's Triton launches on tiny CPU tensors (under TRITON_INTERPRET=1): the Triton
    backend's warmup (decode kernels in both launch forms with their merges, extend, K/V store,
    shared-prefix cascade), the chunked decode in two and three stages, and the fused RMSNorm /
    RoPE (with the K/V store) / SiLU kernels of a layer, the one-row GEMV and the few-row projection."""
    import torch

    from radixserve.attention import triton_decode
    from radixserve.attention.triton_backend import TritonBackend
    from radixserve.kernels import fused
    from radixserve.runner.kv_pool import KVPool

    dtype = torch.bfloat16
    pool = KVPool(256, 1, hkv, d, dtype)
    TritonBackend(pool, num_q_heads=hq).warmup(hq)
    # the chunked decode of the captured steps, in both stage counts (chunks of one key block)
    block_n = triton_decode.decode_config(d, True).block_n
    lens = [2 * block_n + 20, 20]
    slots = torch.arange(1, sum(lens) + 1, dtype=torch.int32)
    q = torch.randn(len(lens), hq, d).to(dtype)
    qo = torch.tensor([0, 1, 2], dtype=torch.int64)
    kv = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int64)
    counters = torch.zeros(len(lens) * hkv, dtype=torch.int32)
    k_pool, v_pool = pool.get(0)
    for stages in (2, 3):
        config = triton_decode.LaunchConfig(block_n, 4, stages)
        triton_decode.decode_attention(
            q, k_pool, v_pool, torch.empty_like(q), qo, kv, slots, None, len(lens), 4, d**-0.5, config=config,
            counters=counters, chunk_len=block_n, heads_first=True,
        )  # fmt: skip
    # the fused elementwise kernels of a layer
    hidden = hq * d
    x, residual, weight = torch.randn(2, hidden).to(dtype), torch.randn(2, hidden).to(dtype), torch.ones(hidden)
    fused.rms_norm(x, weight.to(dtype), 1e-5)
    fused.fused_add_rms_norm(x, residual, weight.to(dtype), 1e-5)
    qkv = torch.randn(2, (hq + 2 * hkv) * d).to(dtype)
    qh, kh, vh = (t.view(2, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=1))
    cos, sin = torch.ones(8, d // 2), torch.zeros(8, d // 2)
    positions = torch.tensor([1, 2])
    fused.rope_inplace(positions, qh, kh, cos, sin)
    fused.rope_inplace(positions, qh, kh, cos, sin, store=(vh, k_pool, v_pool, torch.tensor([1, 2])))
    fused.silu_and_mul(torch.randn(2, 2 * hidden).to(dtype))
    # the one-row GEMV in each launch the startup timing tries for the layer's K
    from radixserve.kernels import gemv

    for k in (hidden, hidden * 7 // 2):  # the down projection's K: 14,336 at hidden 4,096
        w = torch.randn(2, k).to(dtype)
        for config in gemv.configs(k):
            gemv.gemv(w[:1], w, config)
    # the few-row projection in each launch the startup timing tries, each row block, K split or not
    from radixserve.kernels import few_rows

    w = torch.randn(256, hidden).to(dtype)  # 2 to 4 tiles: one SM takes them unsplit, 64 split K
    for config in few_rows.CONFIGS:
        for sms in (1, 64):
            form = few_rows.FewRows(256, hidden, config, torch.device("cpu"), sms=sms)
            for m in (2, 17, 33):
                form(torch.randn(m, hidden).to(dtype), w)


def _run_launches(args) -> None:
    """The ``--record`` child (TRITON_INTERPRET=1): the launches, recorded, as on Hopper."""
    import torch

    from bench.harness import triton_compile

    records: list[str] = []
    triton_compile.install(records)
    from radixserve.attention import launch_configs, triton_cascade, triton_decode

    # launched as on Hopper with 16-bit K/V (``launch_configs.tuned``), the target compiled for
    def hopper(device, dtype):
        return dtype in (torch.bfloat16, torch.float16)

    for module in (launch_configs, triton_cascade, triton_decode):
        module.tuned = hopper
    launch_engine_kernels(args.q_heads, args.kv_heads, args.head_dim)
    Path(args.record).write_text(json.dumps(sorted(set(records))))


def _variant(record: dict) -> str:
    """The flags a launch turns on (its true boolean constexprs), e.g. ``CHUNKED FUSED_MERGE``."""
    flags = [
        name
        for name, arg in sorted(record["args"].items())
        if arg.get("constexpr", {}).get("value") is True and name.isupper()
    ]
    return " ".join(flags) or "-"


def occupancy(registers: int, shared_bytes: int, num_warps: int) -> int:
    """Programs an SM holds at once. Registers go to warps in 8s a thread (256 a warp), each warp
    within one of the four sub-partitions; shared memory in 128-byte units."""
    threads = 32 * num_warps
    warp_registers = max(-(-registers // 8) * 8, 8) * 32
    by_registers = (PARTITION_REGISTERS // warp_registers) * SM_PARTITIONS // num_warps
    by_shared = SM_SHARED_BYTES // (-(-(shared_bytes + BLOCK_SHARED_RESERVED) // 128) * 128)
    return min(by_registers, by_shared, SM_THREADS // threads, SM_PROGRAMS)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.record:
        _run_launches(args)
        return
    from bench.harness.table import print_table
    from bench.harness.triton_compile import compile_record, resources

    rows = []
    for line in record_launches(args):
        record = json.loads(line)
        options = record["options"]
        used = resources(compile_record(record))
        warps = options.get("num_warps", 4)
        rows.append(
            {
                "kernel": record["name"],
                "variant": _variant(record),
                "warps": warps,
                "stages": options.get("num_stages", 3),
                "registers": used["registers"],
                "spill": used["spill_bytes"],
                "shared_kb": round(used["shared_bytes"] / 1024, 1),
                "per_sm": occupancy(used["registers"], used["shared_bytes"], warps),
            }
        )
    rows.sort(key=lambda row: (row["kernel"], row["variant"], row["stages"]))
    columns = [
        ("kernel", "kernel"),
        ("variant", "flags on"),
        ("warps", "warps"),
        ("stages", "stages"),
        ("registers", "registers"),
        ("spill", "spill B"),
        ("shared_kb", "shared KiB"),
        ("per_sm", "programs / SM"),
    ]
    title = f"sm_90, {args.q_heads} q / {args.kv_heads} KV heads, head_dim {args.head_dim}, bf16"
    print_table(rows, columns, title=title)


if __name__ == "__main__":
    main()
