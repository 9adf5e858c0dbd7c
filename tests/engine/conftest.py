from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def engine(default_model_dir):
    from radixserve import Engine

    engine = Engine(max_total_tokens=8192)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def hf_model(default_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.manual_seed(0)
