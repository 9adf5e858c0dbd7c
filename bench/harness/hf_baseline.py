"""Hugging Face ``generate`` on the same model, device and dtype as the engine.

With the engine on dummy weights: ``AutoModelForCausalLM.from_config(config, dtype,
attn_implementation="sdpa")`` (random weights) built directly on the device; with the engine on
real weights (the embedded model on CPU): ``from_pretrained`` of the same directory, since random
weights drive CPU activations into denormal floats and would make HF look slower than it is.
Greedy (``do_sample=False``), ``min_new_tokens = max_new_tokens`` so EOS never ends a row early;
one left-padded batch of random prompts (all of one length, so no padding is needed). Timed after
a small warm-up ``generate``; the figure is batch × output_len / seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class HFSubset:
    batch: int
    input_len: int
    output_len: int

    def describe(self) -> str:
        return f"batch {self.batch} x ({self.input_len} in / {self.output_len} out)"


def hf_output_tok_s(
    config_dir: str, dtype_name: str, subset: HFSubset, vocab_limit: int, pretrained: bool, seed: int = 0
) -> dict:
    """Output tok/s of HF ``generate`` on ``subset``; run it in a child process (bench.harness.isolated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(config_dir)
    kwargs = {"attn_implementation": "sdpa", **_dtype_kwarg(dtype)}
    with torch.device(device):
        if pretrained:
            model = AutoModelForCausalLM.from_pretrained(config_dir, **kwargs).eval()
        else:
            model = AutoModelForCausalLM.from_config(config, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_limit, (subset.batch, subset.input_len), generator=generator).to(device)
    mask = torch.ones_like(input_ids)
    pad = _pad_id(config)

    def generate(ids, attention_mask, new_tokens: int):
        return model.generate(
            input_ids=ids,
            attention_mask=attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )

    with torch.inference_mode():
        generate(input_ids[:2, :16], mask[:2, :16], 4)
        _sync(device)
        start = time.perf_counter()
        out = generate(input_ids, mask, subset.output_len)
        _sync(device)
        seconds = time.perf_counter() - start
    new_tokens = (out.shape[1] - subset.input_len) * subset.batch
    weights = "pretrained" if pretrained else "random"
    return {
        "output_tok_s": round(new_tokens / seconds, 2),
        "seconds": round(seconds, 3),
        "subset": f"{subset.describe()}, {weights} weights",
    }


def _dtype_kwarg(dtype) -> dict:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _pad_id(config) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
