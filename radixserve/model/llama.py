"""One decoder-only model for the Llama family: Llama 2/3/3.x, Mistral, Qwen2 and Qwen3.

The families differ only in switches read from ``ModelConfig``: q/k/v bias (Qwen2), per-head q/k
RMSNorm (Qwen3), llama3 RoPE scaling, tied embeddings. Attention goes through the backend carried
by the ``ForwardBatch``; this file never names a concrete backend.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from radixserve.attention.base import ForwardBatch
from radixserve.model.layers import Embedding, GatedMLP, Linear, RMSNorm, RotaryEmbedding
from radixserve.model.model_config import ModelConfig

# HF checkpoint projection name -> (our fused parameter, shard id)
_STACKED = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype, device=None):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.scale = config.head_dim**-0.5
        qkv_size = self.q_size + 2 * self.kv_size
        self.qkv_proj = Linear(config.hidden_size, qkv_size, config.attention_bias, dtype, device)
        self.o_proj = Linear(self.q_size, config.hidden_size, config.o_proj_bias, dtype, device)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, device) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, device) if config.qk_norm else None

    def forward(self, hidden: torch.Tensor, rotary: RotaryEmbedding, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        backend = batch.attn_backend
        # RoPE and the K/V store in one launch where the backend lets the caller store
        pools = backend.kv_target(self.layer_id)
        stored = pools is not None and rotary.rotate_and_store(batch.positions, q, k, v, *pools, batch.out_slots)
        if not stored:
            q, k = rotary(batch.positions, q, k)
        out = backend.forward(q, k, v, self.layer_id, batch, self.scale, kv_stored=stored)  # [T, Hq, D]
        return self.o_proj(out.reshape(num_tokens, self.q_size))

    def load_shard(self, shard: str, tensor: torch.Tensor, is_bias: bool) -> None:
        offset = {"q": 0, "k": self.q_size, "v": self.q_size + self.kv_size}[shard]
        size = self.q_size if shard == "q" else self.kv_size
        target = self.qkv_proj.bias if is_bias else self.qkv_proj.weight
        _copy(target.narrow(0, offset, size), tensor)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype, device=None):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.self_attn = Attention(config, layer_id, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.mlp_bias, dtype, device)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, hidden], the previous layer's MLP output (or the embeddings)
        residual: torch.Tensor | None,  # [T, hidden], the residual stream before ``hidden`` is added
        rotary: RotaryEmbedding,
        batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mlp_out, residual)``; their sum is this layer's output (the next norm adds it)."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, rotary, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype, device)
        self.layers = nn.ModuleList(DecoderLayer(config, i, dtype, device) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling, device
        )


class LlamaForCausalLM(nn.Module):
    """Parameters are left uninitialised: fill them with ``load_weights`` (or the loader's dummy init)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.model = LlamaModel(config, dtype, device)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, False, dtype, device)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, float32: bool = True) -> torch.Tensor:
        """Run one step; returns logits ``[len(batch.logits_indices), vocab_size]``, float32 or (with
        ``float32=False``) in the model's dtype."""
        return self.logits(*self.hidden_states(batch), batch.logits_indices, float32)

    def hidden_states(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer over the step's tokens: ``(mlp_out, residual)`` of the last layer, ``[T, hidden]``
        each (their sum is its output). Attention is the only call out of the model (the backend)."""
        hidden = self.model.embed_tokens(batch.input_ids)  # [T, hidden]
        residual = None
        for layer in self.model.layers:
            hidden, residual = layer(hidden, residual, self.model.rotary, batch)
        return hidden, residual

    def logits(
        self, hidden: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor, float32: bool = True
    ) -> torch.Tensor:
        """Logits ``[len(rows), vocab_size]`` of the given token rows of ``hidden_states``: float32, or
        in the model's dtype with ``float32=False`` (the runner's: its sampler converts what it must)."""
        hidden, _ = self.model.norm(hidden[rows], residual[rows])  # [num_sampled, hidden]
        logits = self.lm_head(hidden)
        return logits.float() if float32 else logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named tensors into the (fused) parameters; returns the parameter names filled."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            name = self._load_one(hf_name, tensor, params)
            if name is not None:
                loaded.add(name)
        return loaded

    def _load_one(self, hf_name: str, tensor: torch.Tensor, params: dict[str, nn.Parameter]) -> str | None:
        if "rotary_emb" in hf_name or (hf_name == "lm_head.weight" and self.config.tie_word_embeddings):
            return None
        parts = hf_name.split(".")
        stacked = _STACKED.get(parts[-2]) if len(parts) >= 2 else None
        if stacked is None:
            if hf_name not in params:
                raise KeyError(f"checkpoint tensor {hf_name!r} has no parameter in {type(self).__name__}")
            _copy(params[hf_name], tensor)
            return hf_name
        fused, shard = stacked
        name = ".".join([*parts[:-2], fused, parts[-1]])
        layer = self.model.layers[int(parts[2])]
        if fused == "qkv_proj":
            layer.self_attn.load_shard(shard, tensor, is_bias=parts[-1] == "bias")
        else:
            target = params[name].chunk(2, dim=0)[shard]
            _copy(target, tensor)
        return f"{name}:{shard}"

    def expected_weights(self) -> set[str]:
        """Every name ``load_weights`` must report for the model to be fully loaded."""
        expected: set[str] = set()
        for name, _ in self.named_parameters():
            if ".qkv_proj." in name:
                expected.update(f"{name}:{shard}" for shard in "qkv")
            elif ".gate_up_proj." in name:
                expected.update(f"{name}:{shard}" for shard in (0, 1))
            else:
                expected.add(name)
        return expected


def _copy(target: torch.Tensor, source: torch.Tensor) -> None:
    if target.shape != source.shape:
        raise ValueError(f"weight shape {tuple(source.shape)} does not fit parameter shape {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(source)
