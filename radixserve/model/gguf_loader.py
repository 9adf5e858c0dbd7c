"""Read a llama-architecture GGUF file: HF-style config, float32 weights under HF names, tokenizer.

llama.cpp's converter reorders the rows of every Q and K projection so that its interleaved RoPE
(rotate pairs ``(2i, 2i+1)``) matches the checkpoint's half-split RoPE (rotate ``(i, i + D/2)``);
``_unpermute_rope_rows`` undoes that, so the weights run unchanged in our (HF-layout) model.
Llama 3.1-style frequency scaling is stored as a ``rope_freqs`` tensor, not as metadata; we recover
the llama3 parameters that produce it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from radixserve.model.layers import rope_inv_freq
from radixserve.model.model_config import RopeScaling

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Llama 3.1 / 3.2 release values, tried in order against a file's rope_freqs tensor.
_LLAMA3_CANDIDATES = [RopeScaling("llama3", factor) for factor in (8.0, 32.0, 16.0, 4.0, 2.0)]


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    reader = gguf.GGUFReader(str(path))
    arch = read_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (supported: llama)")
    return reader


def read_field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def gguf_hf_config(reader: gguf.GGUFReader) -> dict[str, Any]:
    """A ``config.json`` dict (LlamaForCausalLM) describing the model in ``reader``."""
    hidden_size = int(read_field(reader, "llama.embedding_length"))
    num_heads = int(read_field(reader, "llama.attention.head_count"))
    head_dim = int(read_field(reader, "llama.attention.key_length", 0) or hidden_size // num_heads)
    tensor_names = {t.name for t in reader.tensors}
    tokens = reader.get_field("tokenizer.ggml.tokens")
    theta = _float32(read_field(reader, "llama.rope.freq_base", 10000.0))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(read_field(reader, "llama.vocab_size", 0) or len(tokens.data)),
        "hidden_size": hidden_size,
        "intermediate_size": int(read_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(read_field(reader, "llama.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(read_field(reader, "llama.attention.head_count_kv", num_heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(read_field(reader, "llama.context_length", 2048)),
        "rms_norm_eps": _float32(read_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(reader, head_dim, theta),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    config.update(gguf_special_token_ids(reader))
    return config


def _float32(value: float) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def gguf_special_token_ids(reader: gguf.GGUFReader) -> dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` where the file names them."""
    ids = {}
    for key in ("bos", "eos", "padding"):
        value = read_field(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            ids["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(value)
    return ids


def gguf_chat_template(reader: gguf.GGUFReader) -> str | None:
    return read_field(reader, "tokenizer.chat_template")


def _rope_scaling(reader: gguf.GGUFReader, head_dim: int, theta: float) -> dict[str, Any] | None:
    scaling_type = read_field(reader, "llama.rope.scaling.type", "none")
    if scaling_type == "linear":
        return {"rope_type": "linear", "factor": float(read_field(reader, "llama.rope.scaling.factor"))}
    if scaling_type not in ("none", None):
        raise ValueError(f"GGUF rope scaling {scaling_type!r} is not supported (supported: none, linear, llama3)")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None:
        return None
    divisors = torch.from_numpy(np.asarray(_dequantize(freqs), dtype=np.float32))  # [head_dim // 2]
    base = rope_inv_freq(head_dim, theta, None)
    for candidate in _LLAMA3_CANDIDATES:
        if torch.allclose(base / rope_inv_freq(head_dim, theta, candidate), divisors, rtol=1e-3):
            return {
                "rope_type": "llama3",
                "factor": candidate.factor,
                "low_freq_factor": candidate.low_freq_factor,
                "high_freq_factor": candidate.high_freq_factor,
                "original_max_position_embeddings": candidate.original_max_position_embeddings,
            }
    raise ValueError("GGUF rope_freqs tensor does not match any known llama3 rope scaling")


def gguf_weights(reader: gguf.GGUFReader, hf_config: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, float32 tensor)`` one tensor at a time, Q/K rows back in HF order."""
    num_heads = hf_config["num_attention_heads"]
    num_kv_heads = hf_config["num_key_value_heads"]
    for tensor in reader.tensors:
        hf_name = hf_tensor_name(tensor.name)
        if hf_name is None:
            continue
        weight = torch.from_numpy(np.array(_dequantize(tensor), dtype=np.float32))  # a writable copy, off the mmap
        if ".q_proj." in hf_name:
            weight = _unpermute_rope_rows(weight, num_heads)
        elif ".k_proj." in hf_name:
            weight = _unpermute_rope_rows(weight, num_kv_heads)
        yield hf_name, weight


def hf_tensor_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for tensors we derive."""
    base, _, suffix = gguf_name.rpartition(".")
    if base == "rope_freqs":
        return None
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    raise KeyError(f"unexpected GGUF tensor {gguf_name!r}")


def _dequantize(tensor: gguf.ReaderTensor) -> np.ndarray:
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def _unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's ``reshape(H, 2, D/2, ...).swapaxes(1, 2)`` on a Q/K weight (or bias)."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    # [H, D/2, 2, ...] -> [H, 2, D/2, ...]: row pairs (2i, 2i+1) go back to (i, i + D/2)
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def load_gguf_tokenizer(path: str | Path):
    """A fast HF tokenizer built by transformers from the GGUF's tokenizer metadata."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
