"""Hugging Face ``generate`` on the same model, device and dtype as the engine.

With the engine on dummy weights: ``AutoModelForCausalLM.from_config(config, dtype,
attn_implementation="sdpa")`` (random weights) built directly on the device; with the engine on
real weights (the embedded model on CPU): ``from_pretrained`` of the same directory, since random
weights drive CPU activations into denormal floats and would make HF look slower than it is.
Greedy (``do_sample=False``), ``min_new_tokens = max_new_tokens`` so EOS never ends a row early;
one left-padded batch of random prompts (all of one length, so no padding is needed). Timed after
a small warm-up ``generate``; the figure is batch × output_len / seconds. ``hf_latency`` times
prefill (one new token) and decode (the extra time per further token) per batch size.
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
    hf = _HFModel(config_dir, dtype_name, pretrained, seed)
    input_ids = hf.prompts(subset.batch, subset.input_len, vocab_limit)
    seconds = hf.timed_generate(input_ids, subset.output_len)
    weights = "pretrained" if pretrained else "random"
    return {
        "output_tok_s": round(subset.batch * subset.output_len / seconds, 2),
        "seconds": round(seconds, 3),
        "subset": f"{subset.describe()}, {weights} weights",
    }


def hf_latency(
    config_dir: str,
    dtype_name: str,
    batch_sizes: list[int],
    input_len: int,
    decode_steps: int,
    vocab_limit: int,
    pretrained: bool,
    seed: int = 0,
) -> dict[int, dict]:
    """Per batch size, HF ``generate``'s prefill ms (one new token: the prompt's forward and the
    first token) and decode ms per step (the extra time of ``decode_steps`` more tokens, per step);
    run it in a child process."""
    hf = _HFModel(config_dir, dtype_name, pretrained, seed)
    results = {}
    for batch in batch_sizes:
        input_ids = hf.prompts(batch, input_len, vocab_limit)
        prefill = hf.timed_generate(input_ids, 1)
        whole = hf.timed_generate(input_ids, 1 + decode_steps)
        results[batch] = {
            "prefill_ms": round(prefill * 1e3, 2),
            "decode_ms_per_step": round((whole - prefill) / decode_steps * 1e3, 3),
        }
    return results


class _HFModel:
    """The model built as the module doc says, a prompt maker and a timed greedy ``generate``."""

    def __init__(self, config_dir: str, dtype_name: str, pretrained: bool, seed: int):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(seed)
        self.config = AutoConfig.from_pretrained(config_dir)
        kwargs = {"attn_implementation": "sdpa", **_dtype_kwarg(getattr(torch, dtype_name))}
        with torch.device(self.device):
            if pretrained:
                self.model = AutoModelForCausalLM.from_pretrained(config_dir, **kwargs).eval()
            else:
                self.model = AutoModelForCausalLM.from_config(self.config, **kwargs).eval()
        self.generator = torch.Generator().manual_seed(seed)
        self._warm = False

    def prompts(self, batch: int, input_len: int, vocab_limit: int):
        import torch

        return torch.randint(0, vocab_limit, (batch, input_len), generator=self.generator).to(self.device)

    def timed_generate(self, input_ids, new_tokens: int) -> float:
        """Seconds of one greedy ``generate`` of exactly ``new_tokens`` per row (after a small warm-up
        the first time)."""
        import torch

        with torch.inference_mode():
            if not self._warm:
                self._generate(input_ids[:2, :16], 4)
                self._warm = True
            _sync(self.device)
            start = time.perf_counter()
            self._generate(input_ids, new_tokens)
            _sync(self.device)
            return time.perf_counter() - start

    def _generate(self, input_ids, new_tokens: int):
        import torch

        return self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=_pad_id(self.config),
        )


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
