"""FlashInfer for everything but small decode batches, which run our Triton decode kernels.

At a few sequences a decode step is latency-bound, and there FlashInfer's CUDA-core decode over
page-size-1 contexts is slow: on an H200 (Llama-3.1-8B shapes) 16 µs per layer for one 1,024-token
context, 0.59 ms of a 5.07 ms batch-1 step; in separate runs on that card the Triton backend's
batch-1 step took 4.80 ms against FlashInfer's 5.26-5.28, batch 32 6.35 against 6.82-6.96 ms
(docs/benchmarks.md). From batch 64 up FlashInfer's tensor-core
decode wins (17.1 vs 19.0 ms at batch 256). So ``--triton-decode-max-bs N`` routes pure decode
batches of at most ``N`` sequences to a ``TritonBackend`` over the same pool, and every other step
(prefill, extend, mixed, larger decode) to the ``FlashInferBackend``. Each backend keeps its own
plans, CUDA-graph state and shared-prefix cascade; a step is routed by its size, and a captured
graph by its padded size, so a replay always finds the state its capture planned. So for
graph-replayed batches the cut-off is the largest capture size <= N (with N = 63, batches of 57-63
pad to 64 and replay FlashInfer's graph).

Since large captured batches read their contexts in chunks from a work list (``triton_decode.py``),
Triton's decode also wins the large batches where its launches are tuned (Hopper, 16-bit K/V): there
the default sends every decode batch to it (``AUTO_TRITON_DECODE_MAX_BS_TUNED``), and FlashInfer runs
the prefill, extend and mixed steps.
"""

from __future__ import annotations

import torch

from radixserve.attention.base import AttentionBackend, ForwardBatch


class SmallDecodeSplit(AttentionBackend):
    supports_cuda_graph = True

    def __init__(self, large: AttentionBackend, small: AttentionBackend, max_small_bs: int):
        """``large`` runs every step but pure decode batches of at most ``max_small_bs``
        sequences, which ``small`` runs."""
        self.large, self.small, self.max_small_bs = large, small, max_small_bs
        self._active = large

    def route(self, batch: ForwardBatch) -> AttentionBackend:
        return self.small if batch.is_decode and batch.batch_size <= self.max_small_bs else self.large

    @property
    def step_cascade(self):
        """The cascade layout of the step last prepared, None when it runs the plain kernels."""
        return getattr(self._active, "step_cascade", None)

    def warmup(self, num_q_heads: int) -> None:
        self.large.warmup(num_q_heads)
        self.small.warmup(num_q_heads)

    def wants_eager(self, batch: ForwardBatch) -> bool:
        return self.route(batch).wants_eager(batch)

    def prepare(self, batch: ForwardBatch) -> None:
        self._active = self.route(batch)
        self._active.prepare(batch)

    def kv_target(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._active.kv_target(layer_id)

    def prepare_graph(self, batch: ForwardBatch) -> None:
        self._active = self.route(batch)
        self._active.prepare_graph(batch)

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
        return self._active.forward(q, k, v, layer_id, batch, scale, kv_stored)
