"""The fastest a workload could possibly run on this card, from speeds measured in the same run.

Device (``measure_device``): copy bandwidth = bytes read + written by a large tensor copy / time;
matmul throughput = 2·n³ / time of an n×n×n GEMM. On CUDA: n = 8192 in bfloat16, mean of 20 runs
timed with CUDA events. On CPU: n = 2048 in the engine's dtype, the faster of ``torch.mm`` and the
oneDNN prepacked linear the engine uses, fastest of 5 runs (the CPU may be shared).

Model (``ModelShape``), per decode step of a batch:
- weights read once: every linear weight (q/k/v/o, gate/up/down, the LM head, counted even when
  tied) and the norms, in the engine's dtype; the input embedding is only gathered, not read whole;
- KV read: Σ context lengths × (2 · layers · kv_heads · head_dim · dtype bytes); a prefix shared by
  a group of running requests is counted once per step (what a cascade kernel reads);
- FLOPs: 2 · linear params · tokens + 4 · layers · heads · head_dim per (query, context) pair;
- step time ≥ max(bytes / bandwidth, FLOPs / matmul FLOP/s).
Prefill is counted compute-bound: the FLOPs of every prompt token not shareable with an earlier
request (the LM head only for the last position). An offline workload runs its requests in order
through a batch of at most ``max_running_requests`` whose uncached prompt + output tokens fit the
KV pool (decode simulated step by step); its bound is output tokens / (prefill + Σ decode steps).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ASSUMPTIONS = (
    "roofline: prefill compute-bound on the uncached prompt tokens; each decode step reads all "
    "weights but the embedding once + the KV of every running context (a shared prefix once per step), "
    "time = max(bytes/BW, FLOPs/peak); batch capped by max_running_requests and the KV pool. "
    "Phase sum: the same, each decode step bounded by its projections' max(bytes, FLOPs) plus its "
    "attention's (sequential kernels)"
)


@dataclass(frozen=True)
class DeviceSpeed:
    card: str
    copy_bytes_s: float  # read + written per second
    matmul_flop_s: float
    matmul_desc: str  # e.g. "8192^3 bfloat16"

    def describe(self) -> str:
        return (
            f"copy {self.copy_bytes_s / 1e9:.0f} GB/s, {self.matmul_desc} GEMM {self.matmul_flop_s / 1e12:.2f} TFLOP/s"
        )


def card_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return cpu_name()


def cpu_name() -> str:
    import os

    name = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def measure_device(dtype_name: str) -> DeviceSpeed:
    """Measure copy bandwidth and GEMM throughput of the device the engine would use."""
    import torch

    dtype = getattr(torch, dtype_name)
    if torch.cuda.is_available():
        speed = _measure_cuda(torch, dtype, dtype_name)
        torch.cuda.empty_cache()
        return speed
    return _measure_cpu(torch, dtype, dtype_name)


def _measure_cuda(torch, dtype, dtype_name: str) -> DeviceSpeed:
    def timed(fn, iters: int) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / iters

    def copy_seconds() -> float:
        src = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB
        dst = torch.empty_like(src)
        return timed(lambda: dst.copy_(src), 20)

    def mm_seconds(n: int) -> float:
        a = torch.randn(n, n, dtype=dtype, device="cuda")
        b = torch.randn(n, n, dtype=dtype, device="cuda")
        return timed(lambda: torch.mm(a, b), 20)

    n = 8192
    return DeviceSpeed(card_name(), 2 * 2**30 / copy_seconds(), 2 * n**3 / mm_seconds(n), f"{n}^3 {dtype_name}")


def _measure_cpu(torch, dtype, dtype_name: str) -> DeviceSpeed:
    def timed(fn, iters: int) -> float:
        """The fastest of ``iters`` runs: the machine may be shared, and other load only slows a run."""
        fn()
        best = float("inf")
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    src = torch.ones(64 * 2**20)  # 256 MiB of float32
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 5)
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    mm_s = timed(lambda: torch.mm(a, b), 5)
    if torch.backends.mkldnn.is_available():  # the engine's CPU linears: oneDNN, prepacked weights
        packed = b.to_mkldnn()
        mm_s = min(mm_s, timed(lambda: torch.ops.aten.mkldnn_linear(a.to_mkldnn(), packed, None).to_dense(), 5))
    return DeviceSpeed(card_name(), 2 * src.numel() * 4 / copy_s, 2 * n**3 / mm_s, f"{n}^3 {dtype_name}")


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype_bytes: int

    @classmethod
    def from_config_dir(cls, path: Path, dtype_bytes: int) -> ModelShape:
        from radixserve.model.model_config import ModelConfig

        c = ModelConfig.from_dir(Path(path))
        return cls(
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.vocab_size,
            dtype_bytes,
        )

    @property
    def linear_params(self) -> int:
        """Parameters every token multiplies with: attention and MLP projections, the LM head."""
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attention + mlp) + self.vocab_size * self.hidden_size

    @property
    def weight_bytes(self) -> int:
        norms = (2 * self.num_layers + 1) * self.hidden_size
        return (self.linear_params + norms) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def attention_flops_per_pair(self) -> int:
        """QKᵀ and PV for one query token against one context token, all layers and heads."""
        return 4 * self.num_layers * self.num_heads * self.head_dim

    def prefill_seconds(self, speed: DeviceSpeed, prompt_len: int, cached_len: int) -> float:
        """Compute-bound time to prefill positions cached_len..prompt_len-1 (causal attention)."""
        new = prompt_len - cached_len
        pairs = (prompt_len * (prompt_len + 1) - cached_len * (cached_len + 1)) // 2
        head = self.vocab_size * self.hidden_size  # logits only for the last position
        flops = 2 * (self.linear_params - head) * new + 2 * head + self.attention_flops_per_pair * pairs
        return flops / speed.matmul_flop_s

    def decode_step_seconds(self, speed: DeviceSpeed, batch: int, context_tokens: int, phases: bool = False) -> float:
        """The step's bound: max(bytes / bandwidth, FLOPs / peak) over the whole step; with ``phases``,
        the projections' bound plus attention's, each the max of its own bytes and FLOPs (kernels
        that run one after the other, as in every engine measured here: at large batches the GEMMs
        are compute-bound while attention is bandwidth-bound, and neither hides the other)."""
        return self.step_seconds(speed, batch, context_tokens, context_tokens, phases)

    def step_seconds(self, speed: DeviceSpeed, tokens: int, kv_tokens: int, pairs: int, phases: bool) -> float:
        """Any step's bound (``decode_step_seconds``): ``tokens`` through the projections, ``kv_tokens``
        of K/V read, ``pairs`` (query, context) pairs of attention."""
        linear_flops = 2 * self.linear_params * tokens
        kv_bytes = kv_tokens * self.kv_bytes_per_token
        attention_flops = self.attention_flops_per_pair * pairs
        if phases:
            linear = max(self.weight_bytes / speed.copy_bytes_s, linear_flops / speed.matmul_flop_s)
            return linear + max(kv_bytes / speed.copy_bytes_s, attention_flops / speed.matmul_flop_s)
        bytes_read = self.weight_bytes + kv_bytes
        return max(bytes_read / speed.copy_bytes_s, (linear_flops + attention_flops) / speed.matmul_flop_s)

    def weight_read_seconds(self, speed: DeviceSpeed) -> float:
        return self.weight_bytes / speed.copy_bytes_s

    def describe(self) -> str:
        return (
            f"{self.linear_params / 1e9:.3f} B linear params, {self.weight_bytes / 1e9:.2f} GB read per step, "
            f"KV {self.kv_bytes_per_token / 1024:.0f} KiB/token"
        )


@dataclass(frozen=True)
class RooflineRequest:
    prompt_len: int
    shared_len: int  # prompt tokens reusable from earlier requests: not prefilled, not reserved
    output_len: int
    group: int | None = None
    group_prefix_len: int = 0  # tokens every member of the group starts with: their KV is read once a step


@dataclass
class RooflineResult:
    seconds: float
    prefill_seconds: float
    decode_seconds: float
    num_decode_steps: int
    mean_batch: float
    output_tok_s: float


def offline_roofline(
    shape: ModelShape,
    speed: DeviceSpeed,
    requests: list[RooflineRequest],
    max_batch: int,
    pool_tokens: int,
    phases: bool = False,
) -> RooflineResult:
    """Lower bound on the time of an offline workload (see the module docstring; ``phases``: decode
    steps bounded phase by phase, ``ModelShape.decode_step_seconds``)."""
    prefill = sum(shape.prefill_seconds(speed, r.prompt_len, r.shared_len) for r in requests)
    decode, steps, batch_sum = _simulate_decode(shape, speed, requests, max_batch, pool_tokens, phases)
    total = prefill + decode
    outputs = sum(r.output_len for r in requests)
    return RooflineResult(total, prefill, decode, steps, batch_sum / max(steps, 1), outputs / total if total else 0.0)


def _simulate_decode(shape, speed, requests, max_batch: int, pool_tokens: int, phases: bool) -> tuple[float, int, int]:
    """Σ decode step times; the first output token of a request comes from its prefill."""
    pending = deque(r for r in requests if r.output_len > 1)
    finishing: list[tuple[int, int]] = []  # (finish step, index into admitted)
    admitted: list[RooflineRequest] = []
    shared = _SharedPrefixes()
    step = seconds = batch_sum = own_context = reserved = 0
    while pending or finishing:
        while pending and len(finishing) < max_batch:
            r = pending[0]
            need = r.prompt_len - r.shared_len + r.output_len
            if finishing and reserved + need > pool_tokens:
                break
            pending.popleft()
            heapq.heappush(finishing, (step + r.output_len - 1, len(admitted)))
            admitted.append(r)
            reserved += need
            own_context += r.prompt_len - shared.join(r) + 1
        batch = len(finishing)
        seconds += shape.decode_step_seconds(speed, batch, own_context + shared.tokens, phases)
        batch_sum += batch
        step += 1
        own_context += batch
        while finishing and finishing[0][0] == step:
            r = admitted[heapq.heappop(finishing)[1]]
            own_context -= r.prompt_len - shared.leave(r) + r.output_len
            reserved -= r.prompt_len - r.shared_len + r.output_len
    return seconds, step, batch_sum


class _SharedPrefixes:
    """Running groups' common prefixes: each counted once per step while a member runs."""

    def __init__(self):
        self.tokens = 0
        self._members: dict[int, int] = {}

    def join(self, r: RooflineRequest) -> int:
        """Tokens of ``r``'s context that its group's common prefix covers."""
        if r.group is None or not r.group_prefix_len:
            return 0
        if not self._members.get(r.group):
            self.tokens += r.group_prefix_len
        self._members[r.group] = self._members.get(r.group, 0) + 1
        return r.group_prefix_len

    def leave(self, r: RooflineRequest) -> int:
        if r.group is None or not r.group_prefix_len:
            return 0
        self._members[r.group] -= 1
        if not self._members[r.group]:
            self.tokens -= r.group_prefix_len
        return r.group_prefix_len


def workload_roofline(
    shape: ModelShape,
    speed: DeviceSpeed,
    requests,
    hits: list[int],
    max_batch: int,
    pool_tokens: int,
    cache: bool = True,
    phases: bool = False,
) -> RooflineResult:
    """``offline_roofline`` of BenchRequests whose reusable prefixes are ``hits`` (prefix_index.prefix_hits);
    a group's common prefix is what all its members' prompts start with. ``cache=False``: the bound
    of an engine without a prefix cache (every prompt token prefilled, every context read in full)."""
    from bench.harness.prefix_index import common_prefix_len

    if not cache:
        shaped = [RooflineRequest(r.prompt_len, 0, r.output_len) for r in requests]
        return offline_roofline(shape, speed, shaped, max_batch, pool_tokens, phases)
    common: dict[int, list[int]] = {}
    for r in requests:
        if r.group is not None:
            seen = common.get(r.group)
            common[r.group] = r.prompt_ids if seen is None else seen[: common_prefix_len(seen, r.prompt_ids)]
    shaped = [
        RooflineRequest(r.prompt_len, hit, r.output_len, r.group, len(common[r.group]) if r.group is not None else 0)
        for r, hit in zip(requests, hits)
    ]
    return offline_roofline(shape, speed, shaped, max_batch, pool_tokens, phases)
