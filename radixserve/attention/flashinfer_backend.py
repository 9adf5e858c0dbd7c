"""FlashInfer attention over the radix cache's paged pool (page size 1: a slot is a page).

Per step ``prepare`` plans once and every layer reuses the plan:

* a pure decode batch: ``BatchDecodeWithPagedKVCacheWrapper``, one query per sequence: CUDA-core
  kernels below ``TENSOR_CORE_MIN_BATCH`` sequences, tensor-core kernels above and for GQA group
  sizes the CUDA-core kernels are not built for (H200, Llama-3-8B shapes, one layer: CUDA-core
  56 µs vs tensor-core 90 µs at 32 x 1024; 714 vs 531 µs at 256 x 2048; see bench/);
* anything else (prefill, chunked prefill, extend over a prefix hit, decodes mixed in):
  ``BatchPrefillWithPagedKVCacheWrapper`` with a causal mask. A sequence's new tokens are the last
  ``extend_len`` positions of its context, so bottom-right-aligned causal masking is exactly
  "row j sees positions 0 .. prefix_len + j".
* with ``ragged_prefill``, a step in which every sequence starts from an empty context (nothing
  cached, no decodes: a long prompt's first chunk, a cache-off run) runs
  ``BatchPrefillWithRaggedKVCacheWrapper`` over the new K/V tensors, contiguous, instead of
  gathering them back from the pool's pages. Off by default until measured on a GPU.
* with ``mixed_decode_split = N > 0``, a mixed step whose first ``N`` or more sequences decode
  (the scheduler puts a mixed step's decodes first) runs those on the decode kernels, or on the
  shared-prefix cascade when that pays, and only the rest on the prefill kernel: a decode row in
  the prefill kernel fills a query tile of its own, and over long shared contexts it reads the
  whole prefix once per request (the prefill phase of the shared-prefix workload mixes ~1,000
  such decodes into each chunk); where Triton's decode launches are tuned (Hopper, 16-bit K/V)
  those decodes run Triton's decode kernels rather than BatchDecode. Under the default
  small-decode split (``small_decode.py``: batches up to 63 on Triton, every decode batch on
  Hopper) use ``N`` >= 64: a smaller head would run FlashInfer's CUDA-core decode, which that split
  exists to avoid.

A pure decode batch whose sequences share long prefixes (radix-tree hits) runs the shared-prefix
cascade of ``shared_prefix.py`` (Triton kernels over the same pool) when it pays: BatchDecode
would read each shared prefix once per request. Without triton the plain decode runs.

New K/V are written to the pool before attention (one fused Triton kernel for K and V where triton
is installed), so the kernels read the whole context from it.
Decode steps can be captured in CUDA graphs: ``prepare_graph`` keeps one wrapper per padded batch
size, planned into fixed buffers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import flashinfer
import torch

from radixserve.attention.base import AttentionBackend, ForwardBatch
from radixserve.attention.dummy_step import dummy_step
from radixserve.attention.launch_configs import decode_splits, measured_for_every_decode, target_programs
from radixserve.attention.upload import pinned

_WORKSPACE_BYTES = 768 * 1024 * 1024  # split-KV partials of a 1,024-sequence decode need ~335 MB
TENSOR_CORE_MIN_BATCH = 64
_CUDA_CORE_GROUPS = (1, 2, 3, 4, 8)


class FlashInferBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(self, kv_pool, num_q_heads: int, mixed_decode_split: int = 0, ragged_prefill: bool = False):
        """``kv_pool``: a ``radixserve.runner.kv_pool.KVPool`` on a CUDA device (bf16 or fp16).
        ``mixed_decode_split``: see the module docstring (0: mixed steps run the prefill kernel only).
        ``ragged_prefill``: steps whose every sequence starts from an empty context attend over the
        new K/V as they come out of the projection (ragged) instead of through the pool's pages."""
        if kv_pool.device.type != "cuda":
            raise ValueError("the flashinfer backend needs a CUDA device")
        if kv_pool.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"the flashinfer backend needs a float16 or bfloat16 KV cache, not {kv_pool.dtype}")
        self.kv_pool = kv_pool
        self.num_kv_heads = kv_pool.num_kv_heads
        self.head_dim = kv_pool.head_dim
        self.dtype = kv_pool.dtype
        device = kv_pool.device
        self.workspace = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.num_q_heads = num_q_heads
        self.cuda_core_ok = num_q_heads // self.num_kv_heads in _CUDA_CORE_GROUPS
        self.decode_wrappers = {
            tensor_cores: flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_tensor_cores=tensor_cores
            )
            for tensor_cores in ((True, False) if self.cuda_core_ok else (True,))
        }
        self.prefill_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        # the same JIT module as the paged prefill (its ragged kernel): no extra build
        self.ragged_wrapper = (
            flashinfer.BatchPrefillWithRaggedKVCacheWrapper(self.workspace, "NHD") if ragged_prefill else None
        )
        self.step_ragged = False  # the step last prepared runs the ragged prefill
        self._graph_wrappers: dict[int, flashinfer.BatchDecodeWithPagedKVCacheWrapper] = {}
        self._graph_indices: torch.Tensor | None = None  # as long as the graph runner's slot list
        self._active = self.decode_wrappers[True]
        self._plan_copied: dict[object, torch.cuda.Event] = {}  # wrapper -> its last plan's copy done
        self.shared_prefix = _shared_prefix_decode(kv_pool, num_q_heads)
        self._store_kv = _fused_store_kv()
        # a mixed step's leading decodes (no cascade) on Triton's decode where its launches are tuned
        self._triton_decode = _triton_decode()
        self.triton_mixed_decodes = self._triton_decode is not None and measured_for_every_decode(kv_pool, num_q_heads)
        self._target_programs = target_programs(device)  # (a device query: once, not every mixed step)
        self.step_cascade = None  # the cascade layout of the step last prepared, if it runs one
        self.mixed_decode_split = mixed_decode_split
        self.step_split: _MixedSplit | None = None  # the mixed step last prepared, when split
        # the paged cache as FlashInfer sees it: [num_pages, page_size=1, Hkv, D] per layer
        self._paged = [
            (k.view(-1, 1, self.num_kv_heads, self.head_dim), v.view(-1, 1, self.num_kv_heads, self.head_dim))
            for k, v in zip(kv_pool.k_buffers, kv_pool.v_buffers)
        ]

    # ---- planning (host side, once per step) ------------------------------------------------

    def warmup(self, num_q_heads: int) -> None:
        """Compile our Triton kernels: the K/V store and the shared-prefix cascade (FlashInfer's own
        modules are built or loaded when the wrappers first plan)."""
        if self._store_kv is not None:
            step = dummy_step(self.kv_pool, num_q_heads)  # writes only the dummy slot 0
            self._write_kv(0, step.out_slots, step.k, step.v)
        if self.shared_prefix is not None:
            self.shared_prefix.warmup(num_q_heads)
        if self.triton_mixed_decodes:  # a mixed step's leading decodes, few or many
            step = dummy_step(self.kv_pool, num_q_heads)
            indices = (step.qo_indptr, step.kv_indptr, step.kv_slots)
            self._triton_decode.warmup(step.q, *self.kv_pool.get(0), step.q.clone(), *indices)
        torch.cuda.synchronize(self.kv_pool.device)

    def wants_eager(self, batch: ForwardBatch) -> bool:
        """True when ``batch`` runs the shared-prefix cascade (eager only); ``prepare`` reuses the plan."""
        return self.shared_prefix is not None and self.shared_prefix.plan(batch) is not None

    def prepare(self, batch: ForwardBatch) -> None:
        self.step_cascade = self.shared_prefix.take(batch) if self.shared_prefix is not None else None
        self.step_split = None
        self.step_ragged = False
        if self.step_cascade is not None:
            return
        if batch.is_decode:
            self._active = self._plan_batch_decode(batch)
            return
        if self.ragged_wrapper is not None and batch.seq_lens == batch.extend_lens:  # nothing cached, no decodes
            indptr = self._host_indptr(batch.extend_lens)
            self._plan(
                self.ragged_wrapper,
                indptr,
                indptr,
                self.num_q_heads,
                self.num_kv_heads,
                self.head_dim,
                causal=True,
                q_data_type=self.dtype,
                kv_data_type=self.dtype,
            )
            self.step_ragged = True
            return
        num_decodes = batch.num_leading_decodes
        if 0 < self.mixed_decode_split <= num_decodes:
            self.step_split = self._prepare_decode_head(batch.head(num_decodes))
        self._plan_prefill(batch, num_decodes if self.step_split is not None else 0)

    def _prepare_decode_head(self, head: ForwardBatch) -> _MixedSplit:
        """Plan a mixed step's leading decodes: the cascade where it pays, else Triton's decode
        (``triton_mixed_decodes``: measured faster than BatchDecode on an H200 at every large batch,
        docs/benchmarks.md), else BatchDecode."""
        cascade = self.shared_prefix.take(head) if self.shared_prefix is not None else None
        if cascade is not None:
            return _MixedSplit(head, None, cascade)
        if self.triton_mixed_decodes:
            programs = head.batch_size * self.num_kv_heads
            splits = decode_splits(self._target_programs, programs, max(head.seq_lens))
            return _MixedSplit(head, None, None, splits)
        return _MixedSplit(head, self._plan_batch_decode(head), None)

    def _plan_batch_decode(self, batch: ForwardBatch):
        """Plan BatchDecode over every sequence of ``batch``; the wrapper planned."""
        kv_indptr = self._host_indptr(batch.seq_lens)
        wrapper = self.decode_wrappers[self._tensor_cores(batch.batch_size)]
        self._plan_decode(wrapper, kv_indptr, batch.kv_slots[: int(kv_indptr[-1])], self._host_ones(batch.batch_size))
        return wrapper

    def _plan_prefill(self, batch: ForwardBatch, skip: int) -> None:
        """Plan the prefill kernel over the batch's sequences after the first ``skip``."""
        kv_start = sum(batch.seq_lens[:skip])
        kv_indptr = self._host_indptr(batch.seq_lens[skip:])
        kv_indices = batch.kv_slots[kv_start : kv_start + int(kv_indptr[-1])]
        self._plan(
            self.prefill_wrapper,
            self._host_indptr(batch.extend_lens[skip:]),
            kv_indptr,
            kv_indices.to(torch.int32),
            self._host_ones(batch.batch_size - skip),
            self.num_q_heads,
            self.num_kv_heads,
            self.head_dim,
            1,
            causal=True,
            q_data_type=self.dtype,
            kv_data_type=self.dtype,
        )
        self._active = self.prefill_wrapper

    def prepare_graph(self, batch: ForwardBatch) -> None:
        """Plan a decode batch held in the graph runner's static buffers (see runner/cuda_graph.py)."""
        self.step_cascade = None
        self.step_split = None
        self.step_ragged = False
        if self.shared_prefix is not None:
            self.shared_prefix.forget()
        size = batch.batch_size
        device = self.workspace.device
        if self._graph_indices is None:  # as long as the graph runner's static slot list, which never changes
            self._graph_indices = torch.zeros(batch.kv_slots.numel(), dtype=torch.int32, device=device)
        elif self._graph_indices.numel() < batch.kv_slots.numel():
            raise RuntimeError("the decode graphs' slot list grew after capture: its wrappers hold the old one")
        wrapper = self._graph_wrappers.get(size)
        if wrapper is None:
            wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace,
                "NHD",
                use_cuda_graph=True,
                use_tensor_cores=self._tensor_cores(size),
                paged_kv_indptr_buffer=torch.zeros(size + 1, dtype=torch.int32, device=device),
                paged_kv_indices_buffer=self._graph_indices,
                paged_kv_last_page_len_buffer=torch.ones(size, dtype=torch.int32, device=device),
            )
            self._graph_wrappers[size] = wrapper
        kv_indptr = self._host_indptr(batch.seq_lens)
        kv_indices = batch.kv_slots[: int(kv_indptr[-1])]
        self._plan_decode(wrapper, kv_indptr, kv_indices, self._host_ones(size))
        self._active = wrapper

    # FlashInfer's plan reads these on the host and copies them to the device: pinned, so that the
    # copies do not wait for the step in flight (see upload.py)
    def _host_indptr(self, lengths: list[int]) -> torch.Tensor:
        return pinned([0, *itertools.accumulate(lengths)], torch.int32, self.workspace.device)

    def _host_ones(self, size: int) -> torch.Tensor:
        return pinned([1] * size, torch.int32, self.workspace.device)

    def _tensor_cores(self, batch_size: int) -> bool:
        return batch_size >= TENSOR_CORE_MIN_BATCH or not self.cuda_core_ok

    def _plan_decode(self, wrapper, kv_indptr, kv_indices, last_page_len) -> None:
        self._plan(
            wrapper,
            kv_indptr,
            kv_indices.to(torch.int32),
            last_page_len,
            self.num_q_heads,
            self.num_kv_heads,
            self.head_dim,
            1,
            q_data_type=self.dtype,
            kv_data_type=self.dtype,
        )

    def _plan(self, wrapper, *args, **kwargs) -> None:
        """``wrapper.plan(...)``, once the copy of the wrapper's previous plan has run.

        ``plan`` writes its schedule into a page-locked host buffer of the wrapper and queues a copy
        of it to the device. With the host running a step ahead of the GPU, overwriting that buffer
        before the previous plan's copy has run would hand the step in flight a torn schedule. The
        wait is short: the previous copy sits right behind the step whose tokens the host has just
        waited for.
        """
        copied = self._plan_copied.get(wrapper)
        if copied is not None:
            copied.synchronize()
        wrapper.plan(*args, **kwargs)
        copied = torch.cuda.Event()
        copied.record()
        self._plan_copied[wrapper] = copied

    # ---- per layer ------------------------------------------------------------------------------

    def forward(
        self,
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer_id: int,
        batch: ForwardBatch,
        scale: float,
        kv_stored: bool = False,
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim]
        if not kv_stored:
            self._write_kv(layer_id, batch.out_slots, k, v)
        default_scale = self.head_dim**-0.5
        if self.step_cascade is not None:
            return self.shared_prefix.run(q.to(self.dtype), layer_id, batch, self.step_cascade, scale)
        split = self.step_split
        cascade_q = q.to(self.dtype) if split is not None and split.cascade is not None else None
        if scale != default_scale:  # plans use 1/sqrt(head_dim); fold any other scale into q
            q = q * (scale / default_scale)
        # FlashInfer's kernels read q's token and head strides: the model's q (a view of its fused qkv
        # projection, rotated in place) goes in as it is, not copied (89 us a layer in an 8k-token chunk)
        q = q.to(self.dtype)
        if q.stride(-1) != 1:
            q = q.contiguous()
        if self.step_ragged:  # the new K/V themselves: the whole context of every sequence
            return self.ragged_wrapper.run(q, k.to(self.dtype).contiguous(), v.to(self.dtype).contiguous())
        # our own output buffer: the paged wrapper zero-fills one it allocates (every row is written)
        out = torch.empty(q.shape, dtype=self.dtype, device=q.device)
        if split is None:
            return self._active.run(q, self._paged[layer_id], out=out)
        rows = split.head.num_tokens
        if split.cascade is not None:
            out[:rows] = self.shared_prefix.run(cascade_q[:rows], layer_id, split.head, split.cascade, scale)
        elif split.triton_splits:  # writes the rows of the batch's first head.batch_size sequences
            k_pool, v_pool = self.kv_pool.get(layer_id)
            self._triton_decode.decode_attention(
                q, k_pool, v_pool, out, batch.qo_indptr, batch.kv_indptr, batch.kv_slots, None,
                split.head.batch_size, split.triton_splits, default_scale,
            )  # fmt: skip
        else:
            split.wrapper.run(q[:rows], self._paged[layer_id], out=out[:rows])
        self._active.run(q[rows:], self._paged[layer_id], out=out[rows:])
        return out

    def kv_target(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pool of ``layer_id`` where the fused Triton store would write (RoPE may do it)."""
        return self.kv_pool.get(layer_id) if self._store_kv is not None else None

    def _write_kv(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._store_kv is None:  # two index_put kernels
            self.kv_pool.write(layer_id, slots, k, v)
            return
        k_pool, v_pool = self.kv_pool.get(layer_id)
        self._store_kv(k, v, k_pool, v_pool, slots)


@dataclass
class _MixedSplit:
    """A mixed step's leading decodes, run apart from its prefill rows."""

    head: ForwardBatch  # the decode sequences (the batch's first ``head.batch_size``)
    wrapper: object | None  # the BatchDecode wrapper planned for them, or
    cascade: object | None  # their shared-prefix cascade layout, or
    triton_splits: int = 0  # > 0: Triton's decode, each context split this many ways


def _fused_store_kv():
    """The Triton K/V store (one kernel for both), or None where triton is missing."""
    try:
        from radixserve.attention.triton_kernels import store_kv
    except ImportError:
        return None
    return store_kv


def _triton_decode():
    """``radixserve.attention.triton_decode``, or None where triton is missing."""
    try:
        from radixserve.attention import triton_decode
    except ImportError:
        return None
    return triton_decode


def _shared_prefix_decode(kv_pool, num_q_heads: int):
    """The shared-prefix cascade planner, or None where triton is missing."""
    try:
        from radixserve.attention.shared_prefix import SharedPrefixDecode
    except ImportError:
        return None
    return SharedPrefixDecode(kv_pool, num_q_heads)
