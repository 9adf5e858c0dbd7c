"""The model hyper-parameters, parsed once from a Hugging Face ``config.json``.

Both config.json dialects are accepted: the classic one (``rope_theta`` + ``rope_scaling``) and
transformers 5's (``rope_parameters`` holding theta and the scaling type together).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: ``linear`` (positions / factor) or ``llama3`` (banded by wavelength)."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int  # the context length we serve
    tie_word_embeddings: bool
    attention_bias: bool  # bias on the q/k/v projections
    o_proj_bias: bool  # bias on the attention output projection (Llama's attention_bias covers it, Qwen2's not)
    mlp_bias: bool
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: torch.dtype | None  # the checkpoint's dtype, when it says

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], generation_config: dict[str, Any] | None = None) -> ModelConfig:
        """Parse a config.json dict; ``generation_config`` adds its eos ids when given."""
        architecture = _architecture(hf)
        num_heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // num_heads
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        attention_bias = True if is_qwen2 else bool(hf.get("attention_bias", False))
        rope_theta, rope_scaling = _rope(hf)
        return cls(
            architecture=architecture,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=_context_length(hf),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            o_proj_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            eos_token_ids=_eos_ids(hf, generation_config or {}),
            bos_token_id=hf.get("bos_token_id"),
            torch_dtype=_DTYPES.get(str(hf.get("torch_dtype") or hf.get("dtype"))),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read ``config.json`` (and ``generation_config.json`` when present) from a model directory."""
        path = Path(path)
        hf = json.loads((path / "config.json").read_text())
        generation_path = path / "generation_config.json"
        generation = json.loads(generation_path.read_text()) if generation_path.exists() else None
        return cls.from_hf_config(hf, generation)


def _architecture(hf: dict[str, Any]) -> str:
    architectures = hf.get("architectures") or []
    for name in architectures:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    if not architectures and hf.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[hf["model_type"]]
    raise ValueError(
        f"unsupported model architecture {architectures or hf.get('model_type')!r}; "
        f"radixserve supports {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = dict(hf.get("rope_parameters") or {})
    params.update(hf.get("rope_scaling") or {})
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type == "default":
        return theta, None
    if rope_type == "linear":
        return theta, RopeScaling("linear", float(params["factor"]))
    if rope_type == "llama3":
        scaling = RopeScaling(
            "llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
        return theta, scaling
    raise ValueError(f"unsupported rope scaling type {rope_type!r} (supported: default, linear, llama3)")


def _context_length(hf: dict[str, Any]) -> int:
    """The longest context served exactly: sliding-window attention is not implemented, so an active
    window caps the context at the window size (inside it, windowed and full attention agree)."""
    length = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    uses_window = hf.get("use_sliding_window", "use_sliding_window" not in hf)
    if window and uses_window:
        length = min(length, int(window))
    return length


def _eos_ids(hf: dict[str, Any], generation: dict[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (hf.get("eos_token_id"), generation.get("eos_token_id")):
        for token_id in source if isinstance(source, list) else [source]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))
    return tuple(ids)
