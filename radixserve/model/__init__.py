"""Llama-family models (Llama 2/3/3.x, Mistral, Qwen2, Qwen3) and their weight loaders."""

from radixserve.model.default_model import ensure_default_model
from radixserve.model.llama import LlamaForCausalLM
from radixserve.model.loader import LOAD_FORMATS, load_model, resolve_model_path
from radixserve.model.model_config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling

__all__ = [
    "LOAD_FORMATS",
    "SUPPORTED_ARCHITECTURES",
    "LlamaForCausalLM",
    "ModelConfig",
    "RopeScaling",
    "ensure_default_model",
    "load_model",
    "resolve_model_path",
]
