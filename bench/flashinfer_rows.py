"""FlashInfer's BatchDecode rows of ``bench.cascade_kernels``: the same keys as our kernels read,
planned the ways the engine could plan them, each returned with its time and output (GPU, bf16)."""

from __future__ import annotations

import importlib.util
import itertools

import torch

from bench.shared_prefix_attention import time_us


def suffix_rows(pool, contexts, shared, q, iters, device):
    """(tensor cores, us, merged output) of FlashInfer's BatchDecode over each request's own keys."""
    if importlib.util.find_spec("flashinfer") is None:
        print("(flashinfer not installed: its rows are skipped)")
        return []
    import flashinfer

    num_q_heads, num_kv_heads, head_dim = q.shape[1], pool.num_kv_heads, pool.head_dim
    owns = [c[s:] for c, s in zip(contexts, shared)]
    indptr = torch.tensor([0, *itertools.accumulate(len(o) for o in owns)], dtype=torch.int32)  # on the host,
    indices = torch.tensor([slot for o in owns for slot in o], dtype=torch.int32, device=device)  # as the backend's
    last = torch.ones(len(owns), dtype=torch.int32)
    k_pool, v_pool = pool.get(0)
    paged = (k_pool.view(-1, 1, num_kv_heads, head_dim), v_pool.view(-1, 1, num_kv_heads, head_dim))
    workspace = torch.zeros(256 << 20, dtype=torch.uint8, device=device)
    results = []
    for tensor_cores in (True, False):
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=tensor_cores)
        # (the default scale, 1 / sqrt(head_dim), is the model's)
        wrapper.plan(indptr, indices, last, num_q_heads, num_kv_heads, head_dim, 1,
                     q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)  # fmt: skip
        us = time_us(lambda w=wrapper: w.run(q, paged, return_lse=True), iters, device)
        results.append((tensor_cores, us, wrapper.run(q, paged)))
    return results


def plain_rows(pool, contexts, q, layers, iters, device):
    """(variant, us a layer, output of every layer) of FlashInfer's BatchDecode, a layer over each
    pool in turn: tensor cores (the engine's choice at these sizes) with its split-KV scheduler and
    with ``disable_split_kv`` (where this FlashInfer takes it), and the CUDA-core kernel, each
    planned eagerly and run eagerly; then tensor cores planned and run as the engine's decode graphs
    do (``use_cuda_graph`` wrappers over fixed buffers, the layers replayed from a CUDA graph)."""
    if importlib.util.find_spec("flashinfer") is None:
        print("(flashinfer not installed: its rows are skipped)")
        return []
    import flashinfer

    num_q_heads, num_kv_heads, head_dim = q.shape[1], pool.num_kv_heads, pool.head_dim

    indptr = torch.tensor([0, *itertools.accumulate(len(c) for c in contexts)], dtype=torch.int32)
    indices = torch.tensor([slot for c in contexts for slot in c], dtype=torch.int32, device=device)
    last = torch.ones(len(contexts), dtype=torch.int32)
    paged = [
        (k.view(-1, 1, num_kv_heads, head_dim), v.view(-1, 1, num_kv_heads, head_dim))
        for k, v in zip(pool.k_buffers, pool.v_buffers)
    ]
    workspace = torch.zeros(256 << 20, dtype=torch.uint8, device=device)
    out = torch.empty(layers, *q.shape, device=device, dtype=q.dtype)
    results = []
    variants = [("tensor cores", True, {}), ("tensor cores, no split-KV", True, {"disable_split_kv": True})]
    for name, tensor_cores, extra in [*variants, ("CUDA cores", False, {})]:
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=tensor_cores)
        try:
            wrapper.plan(indptr, indices, last, num_q_heads, num_kv_heads, head_dim, 1,
                         q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, **extra)  # fmt: skip
        except TypeError as error:  # an option this FlashInfer does not have
            print(f"(flashinfer BatchDecode, {name}: {error})")
            continue

        def run(w=wrapper):
            for layer in range(layers):
                w.run(q, paged[layer], out=out[layer])

        us = time_us(run, iters, device) / layers
        results.append((name, us, out.clone()))
    for name, extra in [("tensor cores, graph-mode plan (the engine's)", {}),
                        ("tensor cores, graph-mode plan, no split-KV", {"disable_split_kv": True})]:  # fmt: skip
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True,
            paged_kv_indptr_buffer=torch.zeros(len(contexts) + 1, dtype=torch.int32, device=device),
            paged_kv_indices_buffer=torch.zeros(indices.numel(), dtype=torch.int32, device=device),
            paged_kv_last_page_len_buffer=torch.ones(len(contexts), dtype=torch.int32, device=device),
        )  # fmt: skip
        try:
            wrapper.plan(indptr, indices, last, num_q_heads, num_kv_heads, head_dim, 1,
                         q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, **extra)  # fmt: skip
        except (TypeError, RuntimeError) as error:  # an option this FlashInfer does not have in graph mode
            print(f"(flashinfer BatchDecode, {name}: {error})")
            continue

        def run_graph(w=wrapper):
            for layer in range(layers):
                w.run(q, paged[layer], out=out[layer])

        run_graph()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_graph()
        us = time_us(graph.replay, iters, device) / layers
        results.append((name, us, out.clone()))
    return results
