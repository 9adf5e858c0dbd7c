"""Piecewise CUDA graphs: every step that no decode graph replays, without Python's launch cost.

A prefill, a mixed prefill+decode step or a shared-prefix cascade decode runs its attention with a
plan made for that very step, so it cannot replay a whole-step graph. Run eagerly, such a step
launches ~10 kernels a layer from Python (torch ops, Triton launchers): on an H200 with
Llama-3.1-8B a 200-token prefill step took 25-31 ms of wall time for 6.4 ms of device work
(``bench.profile_step --phase prefill --batch 1 --input-len 200``), and that step is most of a
served request's time to first token.

So the model is captured in pieces, per padded token count ``P``: piece 0 runs from the embedding
to layer 0's attention inputs (norm, QKV projection, RoPE), piece ``i`` from layer ``i - 1``'s
attention output to layer ``i``'s attention inputs (output projection, residual add, norms, MLP,
the next QKV and RoPE), and the last piece to the last layer's output. Between the pieces the
attention backend runs eagerly on the real tokens with the step's own plan: its K/V store and
kernels are the same calls as in an eager step. A step of ``T`` tokens replays the pieces of the
smallest ``P >= T``; rows ``T..P`` are padding (stale ids and positions of an earlier step, always
valid indices) that no real row reads: every op outside attention is row-wise, and attention only
sees the first ``T`` rows. The logits of the sampled rows are computed eagerly at the end.

The pieces of one size are captured in order into one memory pool shared by every size (largest
first) and replayed in the same order; each piece's attention inputs stay referenced, so the pool
never hands their memory to a later piece. That is the runner's memory cost: every layer's QKV
output at every size (Llama-3.1-8B: 12 KiB per token and layer, ~1.2 GiB for the sizes up to
1,024), captured before the KV pool is sized so that the pool takes what is left.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from radixserve.attention.base import AttentionBackend, ForwardBatch

logger = logging.getLogger(__name__)


def token_buckets(max_tokens: int) -> list[int]:
    """Padded token counts captured: 16, 32, 64, 128, 256, 384, 512, then every 256, capped at ``max_tokens``."""
    sizes = [16, 32, 64, 128, 256, 384, 512, *range(768, max_tokens + 1, 256)]
    sizes = sorted({size for size in sizes if size <= max_tokens})
    if not sizes or sizes[-1] != max_tokens:
        sizes.append(max_tokens)
    return sizes


class _AttentionInputs:
    """One layer's attention call as captured: where its q, k, v are and where its output goes."""

    def __init__(self, layer_id: int, scale: float, q, k, v, out: torch.Tensor):
        self.layer_id, self.scale = layer_id, scale
        self.q, self.k, self.v, self.out = q, k, v, out


class _PieceBreak(AttentionBackend):
    """Stands in for the attention backend while the model is captured: each attention call ends
    the graph being captured, notes the layer's q/k/v, and starts the next graph, whose first op
    reads the static ``out`` buffer that the real attention fills at replay. Without ``capture``
    (the warm-up run) it only returns ``out``."""

    def __init__(self, out: torch.Tensor, capture):
        self.out, self.capture = out, capture
        self.calls: list[_AttentionInputs] = []

    def prepare(self, batch: ForwardBatch) -> None:  # never planned: the real backend runs at replay
        pass

    def kv_target(self, layer_id: int) -> None:
        """None: the model must not store K/V inside a piece (the capture batch's ``out_slots`` are
        token ids, and a replay's slots differ); the real backend stores them at replay."""
        return None

    def forward(self, q, k, v, layer_id: int, batch: ForwardBatch, scale: float, kv_stored=False) -> torch.Tensor:
        if self.capture is not None:
            self.capture.next_piece()
        self.calls.append(_AttentionInputs(layer_id, scale, q, k, v, self.out))
        return self.out


class _Capture:
    """Consecutive graphs on one side stream, sharing one memory pool."""

    def __init__(self, pool):
        self.pool = pool
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def next_piece(self) -> None:
        if self.graphs:
            self.end()
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=self.pool)
        self.graphs.append(graph)

    def end(self) -> None:
        self.graphs[-1].capture_end()
        if self.pool is None:  # the first graph's pool, shared by every later one
            self.pool = self.graphs[-1].pool()

    def abort(self) -> None:
        """End a capture that failed midway, if one is open (its graphs are dropped)."""
        if self.graphs and torch.cuda.is_current_stream_capturing():
            with contextlib.suppress(RuntimeError):  # invalidated by the failure: ending it is all we need
                self.graphs[-1].capture_end()


class _Pieces:
    """The captured graphs of one padded size and the tensors their replay connects."""

    def __init__(self, graphs, calls, hidden, residual):
        self.graphs: list[torch.cuda.CUDAGraph] = graphs  # len(calls) + 1
        self.calls: list[_AttentionInputs] = calls
        self.hidden, self.residual = hidden, residual  # the last layer's outputs, [P, hidden]


class PiecewiseGraphRunner:
    """Captures the model in pieces per padded token count and replays a step through them, the
    attention backend running eagerly between the pieces."""

    def __init__(self, model: torch.nn.Module, backend: AttentionBackend | None, max_tokens: int, device: torch.device):
        """``model``: has ``hidden_states(batch)`` and ``logits(hidden, residual, rows)`` (llama.py);
        ``backend``: the real attention backend, run between the pieces at replay (capture does not
        use it: it may be set later, once the KV pool exists)."""
        self.model, self.backend, self.device = model, backend, device
        self.sizes = token_buckets(max_tokens)
        self.max_tokens = self.sizes[-1]
        self.input_ids = torch.zeros(self.max_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(self.max_tokens, dtype=torch.int64, device=device)
        self.pieces: dict[int, _Pieces] = {}
        self.pool = None

    def can_run(self, batch: ForwardBatch) -> bool:
        return bool(self.pieces) and 0 < batch.num_tokens <= self.max_tokens

    def _static_batch(self, size: int, backend: AttentionBackend) -> ForwardBatch:
        """The capture's batch: only the ids and positions are read outside attention."""
        ids, positions = self.input_ids[:size], self.positions[:size]
        return ForwardBatch(
            input_ids=ids,
            positions=positions,
            out_slots=ids,
            qo_indptr=ids,
            kv_indptr=ids,
            kv_slots=ids,
            seq_lens=[1] * size,
            extend_lens=[1] * size,
            logits_indices=ids[:1],
            attn_backend=backend,
        )

    @torch.inference_mode()
    def capture(self, num_q_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        """Capture every size, largest first. The first call per size runs uncaptured: lazy inits,
        cuBLAS heuristics and Triton JIT happen outside the graphs."""
        started = time.perf_counter()
        free_before = torch.cuda.mem_get_info(self.device)[0]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up on the capture stream: its cuBLAS workspace too
            for size in reversed(self.sizes):
                self._capture_size(size, num_q_heads, head_dim, dtype)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        logger.info(
            "captured piecewise CUDA graphs for %d token counts (max %d, %d pieces each) in %.1f s, %.2f GiB",
            len(self.sizes),
            self.max_tokens,
            len(self.pieces[self.max_tokens].graphs),
            time.perf_counter() - started,
            (free_before - torch.cuda.mem_get_info(self.device)[0]) / 2**30,
        )

    def _capture_size(self, size: int, num_q_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        out = torch.zeros(size, num_q_heads, head_dim, dtype=dtype, device=self.device)
        self.model.hidden_states(self._static_batch(size, _PieceBreak(out, None)))
        torch.cuda.synchronize(self.device)
        capture = _Capture(self.pool)
        piece_break = _PieceBreak(out, capture)
        try:
            capture.next_piece()
            hidden, residual = self.model.hidden_states(self._static_batch(size, piece_break))
            capture.end()
        except BaseException as exc:
            capture.abort()  # leave the stream out of capture mode, so the error below is the real one
            raise RuntimeError(
                f"piecewise CUDA graph capture failed at {size} tokens, piece {len(capture.graphs)}"
                " (--piecewise-cuda-graph-max-tokens 0 runs those steps eagerly)"
            ) from exc
        self.pool = capture.pool
        self.pieces[size] = _Pieces(capture.graphs, piece_break.calls, hidden, residual)

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits (the model's dtype) ``[num_sampled, vocab]`` of a step whose attention ``self.backend`` has
        prepared (``prepare(batch)``), as ``model(batch, float32=False)`` would compute them."""
        assert batch.attn_backend is None or batch.attn_backend is self.backend, "replay runs self.backend"
        real = batch.num_tokens
        size = next(s for s in self.sizes if s >= real)
        self.input_ids[:real].copy_(batch.input_ids)
        self.positions[:real].copy_(batch.positions)
        pieces = self.pieces[size]
        for graph, call in zip(pieces.graphs, pieces.calls):
            graph.replay()
            out = self.backend.forward(call.q[:real], call.k[:real], call.v[:real], call.layer_id, batch, call.scale)
            call.out[:real].copy_(out)
        pieces.graphs[-1].replay()
        return self.model.logits(pieces.hidden[:real], pieces.residual[:real], batch.logits_indices, float32=False)
