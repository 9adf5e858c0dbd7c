"""Building blocks of the Llama family: linear/embedding without init, RMSNorm, RoPE, gated MLP.

Parameters are allocated with ``torch.empty``: a model is built in milliseconds and then filled by
the loader (checkpoint weights or the seeded dummy init), never initialised twice.

On CUDA, where triton imports, the norms (with the residual add), RoPE and SiLU-and-mul run as
fused Triton kernels (``radixserve.kernels``); everywhere else the ``*_torch`` functions below run,
which are also the reference the kernels are tested against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.kernels import fused_ops
from radixserve.model.model_config import RopeScaling


def _fused_kernels(x: torch.Tensor):
    """The fused-kernel module when ``x`` lives on CUDA and triton imports, else None (the torch path)."""
    return fused_ops() if x.is_cuda else None


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with ``W: [out_features, in_features]``, left uninitialised."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None
        self.packed: tuple[torch.Tensor, torch.Tensor | None] | None = None  # oneDNN (weight, bias)
        # ((most rows, f(x, W) or None for F.linear), ...) by growing row count, where startup timing
        # found a faster form for inputs of that many rows or fewer (linear_tuning.py)
        self.small_rows: tuple = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0]:  # zero rows (a step that samples nothing asks the LM head): F.linear
            for most, form in self.small_rows:
                if x.shape[0] <= most:
                    if form is not None:
                        return form(x, self.weight)
                    break
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


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / rms(x))`` over the last dim, normalised in float32 and cast back before the
    weight multiplies (HF Llama's order of rounding)."""
    input_dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(input_dtype)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim, normalised in float32 like the reference model.

    Called with a ``residual`` it first adds it (``residual + x`` in ``x``'s dtype) and returns
    ``(norm(sum), sum)``: the decoder carries its residual stream through the norms, so that on
    CUDA the add and the norm are one kernel.
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        kernels = _fused_kernels(x) if x.dtype == self.weight.dtype else None
        if residual is None:
            if kernels is not None:
                return kernels.rms_norm(x, self.weight, self.eps)
            return rms_norm_torch(x, self.weight, self.eps)
        if kernels is not None:
            return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)
        hidden = residual + x
        return rms_norm_torch(hidden, self.weight, self.eps), hidden


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
        """Rotated ``(q, k)``. On the fused path q and k are rotated in place and returned (float32
        math, one rounding: see ``kernels.fused.rope_inplace``); otherwise new tensors."""
        kernels = _fused_kernels(q)
        if kernels is not None and q.stride(-1) == 1 and k.stride(-1) == 1:
            kernels.rope_inplace(positions, q, k, self.cos_cache, self.sin_cache)
            return q, k
        return rope_torch(positions, q, k, self.cos_cache, self.sin_cache)

    def rotate_and_store(
        self,
        positions: torch.Tensor,  # [T]
        q: torch.Tensor,  # [T, num_q_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        k_pool: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
        v_pool: torch.Tensor,
        out_slots: torch.Tensor,  # [T]
    ) -> bool:
        """Where the fused kernel applies, rotates q and k in place and writes the rotated k and v
        into the pools at ``out_slots`` in the same launch, and returns True; else does nothing and
        returns False (the caller rotates, and the attention backend stores)."""
        kernels = _fused_kernels(q)
        fits = q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
        if kernels is None or not (fits and k_pool.is_contiguous() and v_pool.is_contiguous()):
            return False
        kernels.rope_inplace(positions, q, k, self.cos_cache, self.sin_cache, store=(v, k_pool, v_pool, out_slots))
        return True


def rope_torch(
    positions: torch.Tensor,  # [T] int64
    q: torch.Tensor,  # [T, num_q_heads, head_dim]
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    cos_cache: torch.Tensor,  # [max_positions, head_dim // 2] float32
    sin_cache: torch.Tensor,  # [max_positions, head_dim // 2] float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style RoPE in ``q.dtype`` (cos/sin cast first, like HF Llama); returns new tensors."""
    cos = cos_cache[positions].to(q.dtype)  # [T, head_dim // 2]
    sin = sin_cache[positions].to(q.dtype)
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
        gate_up = self.gate_up_proj(x)  # [T, 2 * intermediate]
        kernels = _fused_kernels(gate_up)
        activation = kernels.silu_and_mul(gate_up) if kernels is not None else silu_and_mul_torch(gate_up)
        return self.down_proj(activation)  # activation: [T, intermediate]


def silu_and_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dim."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
