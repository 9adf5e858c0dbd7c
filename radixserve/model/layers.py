"""Building blocks of the Llama family: linear/embedding without init, RMSNorm, RoPE, gated MLP.

Parameters are allocated with ``torch.empty``: a model is built in milliseconds and then filled by
the loader (checkpoint weights or the seeded dummy init), never initialised twice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.model.model_config import RopeScaling


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with ``W: [out_features, in_features]``, left uninitialised."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None
        self.packed: tuple[torch.Tensor, torch.Tensor | None] | None = None  # oneDNN (weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            weight, bias = self.packed
            return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), weight, bias).to_dense()
        return F.linear(x, self.weight, self.bias)

    def prepack_cpu(self) -> None:
        """Keep a copy of the weight in oneDNN's blocked layout for CPU inference.

        Small-batch GEMMs (decode) are bound by reading the weights; the blocked layout streams
        them about 2x faster than the plain row-major MKL path on AVX-512 CPUs (see bench/).
        Call after the weights are loaded; the dense parameter stays (it may be tied).
        """
        bias = None if self.bias is None else self.bias.detach().to_mkldnn()
        self.packed = (self.weight.detach().to_mkldnn(), bias)


def prepack_cpu_linears(model: nn.Module) -> int:
    """Prepack every ``Linear`` of a CPU float32/bfloat16 model for oneDNN; returns how many were packed."""
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for module in model.modules():
        if not isinstance(module, Linear):
            continue
        if module.weight.device.type == "cpu" and module.weight.dtype in (torch.float32, torch.bfloat16):
            module.prepack_cpu()
            count += 1
    return count


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, dtype=dtype, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim, normalised in float32 like the reference model."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(input_dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` (float32), with linear or llama3 scaling applied."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    return _llama3_inv_freq(inv_freq, scaling)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1: long wavelengths are slowed by ``factor``, short ones kept, the band between blended."""
    old_len = scaling.original_max_position_embeddings
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    is_low_freq = wavelen > old_len / low
    is_high_freq = wavelen < old_len / high
    scaled = torch.where(is_low_freq, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    return torch.where(~is_low_freq & ~is_high_freq, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Neox-style RoPE (rotate the two halves of each head) from a cos/sin cache indexed by position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None, device=None):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling).to(device)  # [head_dim // 2]
        positions = torch.arange(max_positions, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)  # [max_positions, head_dim // 2]
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)

    def forward(
        self,
        positions: torch.Tensor,  # [T] int64
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos_cache[positions].to(q.dtype)  # [T, head_dim // 2]
        sin = self.sin_cache[positions].to(q.dtype)
        cos = torch.cat((cos, cos), dim=-1).unsqueeze(1)  # [T, 1, head_dim]
        sin = torch.cat((sin, sin), dim=-1).unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated_half * sin


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, dtype: torch.dtype, device=None):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias, dtype, device)
        self.down_proj = Linear(intermediate_size, hidden_size, bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)  # [T, intermediate] each
        return self.down_proj(F.silu(gate) * up)
