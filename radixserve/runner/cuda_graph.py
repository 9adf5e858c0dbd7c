"""CUDA graphs for decode steps: capture the model once per padded batch size, replay every step.

A decode step of a small model or a small batch is bound by kernel launches (hundreds per step),
not by the GPU. Replaying a captured graph turns them into one launch.

The captured batch lives in static buffers (same storage at capture and at every replay). A real
batch of ``B`` decodes runs in the graph of the smallest captured size ``P >= B``; the ``P - B``
padding rows read token 0 at position 0, write their K/V to the dummy slot 0 and attend to a
one-slot context ``[0]``, so they touch nothing a real sequence owns. Logits of the padding rows
are dropped.

The contexts of one step can sum to more KV slots than the pool holds: requests under one radix
node list the shared prefix's slots each. The static slot list holds up to ``CONTEXT_SLOTS_PER_POOL_SLOT``
times the pool (``kv_slot_capacity``); a step whose contexts sum to more runs without the graph.

The attention backend takes part through ``supports_cuda_graph`` and ``prepare_graph(batch)``
(called before capture and before each replay, outside the graph: all host work happens there).
"""

from __future__ import annotations

import logging
import time

import torch

from radixserve.attention.base import AttentionBackend, ForwardBatch

logger = logging.getLogger(__name__)


def capture_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 64, every 16 up to 256, every 32 beyond, capped at ``max_bs``."""
    sizes = [1, 2, 4, 8, *range(16, 65, 8), *range(80, 257, 16), *range(288, max_bs + 1, 32)]
    sizes = sorted({size for size in sizes if size <= max_bs})
    if not sizes or sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


# how many times over the pool's slots one decode step's contexts may list and still replay: a step
# past it (many requests sharing long prefixes in a small pool) runs eagerly or in piecewise graphs
CONTEXT_SLOTS_PER_POOL_SLOT = 4


def kv_slot_capacity(pool_size: int, max_bs: int, max_seq_len: int) -> int:
    """Context slots a replayed step may list: every running sequence at its longest, bounded by
    ``CONTEXT_SLOTS_PER_POOL_SLOT`` pools (int32 each: 4 bytes a slot)."""
    return min(max_bs * min(max_seq_len, pool_size), CONTEXT_SLOTS_PER_POOL_SLOT * pool_size)


class DecodeGraphRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        backend: AttentionBackend,
        max_bs: int,
        max_context_slots: int,
        device: torch.device,
    ):
        """``max_context_slots``: the most KV slots a replayed step's contexts may sum to (see
        ``kv_slot_capacity``)."""
        self.model = model
        self.backend = backend
        self.sizes = capture_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        self.device = device
        self.max_context_slots = max_context_slots
        self._init_buffers(max_context_slots)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _init_buffers(self, max_context_slots: int) -> None:
        size, device = self.max_bs, self.device
        self.input_ids = torch.zeros(size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(size, dtype=torch.int64, device=device)
        self.out_slots = torch.zeros(size, dtype=torch.int64, device=device)
        self.qo_indptr = torch.arange(size + 1, dtype=torch.int64, device=device)
        self.kv_indptr = torch.arange(size + 1, dtype=torch.int64, device=device)
        self.kv_slots = torch.zeros(max_context_slots + size, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(size, dtype=torch.int64, device=device)
        self._pad_offsets = torch.arange(1, size + 1, dtype=torch.int64, device=device)

    def can_run(self, batch: ForwardBatch) -> bool:
        return (
            bool(self.graphs)
            and batch.batch_size <= self.max_bs
            and batch.is_decode
            and sum(batch.seq_lens) <= self.max_context_slots
        )

    def _static_batch(self, size: int, seq_lens: list[int]) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            out_slots=self.out_slots[:size],
            qo_indptr=self.qo_indptr[: size + 1],
            kv_indptr=self.kv_indptr[: size + 1],
            kv_slots=self.kv_slots,
            seq_lens=seq_lens,
            extend_lens=[1] * size,
            logits_indices=self.logits_indices[:size],
            attn_backend=self.backend,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first, so smaller graphs reuse the largest one's memory pool."""
        started = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):
            batch = self._static_batch(size, [1] * size)  # every row: the padding row
            self.backend.prepare_graph(batch)
            for _ in range(2):  # warm up: lazy inits, autotuning and JIT happen outside the graph
                self.model(batch, float32=False)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.model(batch, float32=False)  # the model's dtype, as the runner's
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        logger.info(
            "captured decode CUDA graphs for %d batch sizes (max %d) in %.1f s",
            len(self.sizes),
            self.max_bs,
            time.perf_counter() - started,
        )

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits ``[B, vocab]`` of a decode batch; valid until the next replay."""
        real = batch.batch_size
        size = next(s for s in self.sizes if s >= real)
        pad = size - real
        total = sum(batch.seq_lens)
        self.input_ids[:real].copy_(batch.input_ids)
        self.positions[:real].copy_(batch.positions)
        self.out_slots[:real].copy_(batch.out_slots)
        self.kv_indptr[: real + 1].copy_(batch.kv_indptr)
        self.kv_slots[:total].copy_(batch.kv_slots)
        if pad:
            self.input_ids[real:size].zero_()
            self.positions[real:size].zero_()
            self.out_slots[real:size].zero_()
            self.kv_indptr[real + 1 : size + 1].copy_(self._pad_offsets[:pad]).add_(total)
            self.kv_slots[total : total + pad].zero_()
        self.backend.prepare_graph(self._static_batch(size, batch.seq_lens + [1] * pad))
        self.graphs[size].replay()
        return self.outputs[size][:real]
