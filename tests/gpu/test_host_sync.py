"""Does a step's host work wait for the GPU? The overlap schedule means to plan step N+1 on the
CPU while step N runs, but a host-to-device copy from pageable memory waits for every kernel
already queued (CUDA stages it behind a stream sync). Each test queues ~0.5 s of GPU sleep, runs
per-step host work, and checks whether the sleep is still running when the host is done.
"""

from __future__ import annotations

import pytest
import torch

from radixserve.attention.upload import upload_aligned
from radixserve.core.plan import SequencePlan
from radixserve.core.sampling_params import SamplingParams
from radixserve.runner.slot_table import SlotTable
from tests.gpu.test_attention_backends import (
    BACKENDS,
    NUM_KV_HEADS,
    Shape,
    make_backend,
    make_batch,
    make_pool,
    make_sequences,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
SLEEP_CYCLES = 1_000_000_000  # ~0.5 s at ~2 GHz


def busy_gpu() -> torch.cuda.Event:
    """Queue a long GPU sleep; the returned event completes when it ends."""
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    done = torch.cuda.Event()
    done.record()
    return done


def test_the_aligned_index_upload_does_not_wait_for_queued_gpu_work():
    device = torch.device("cuda")
    done = busy_gpu()
    parts = upload_aligned(([5, 6, 7], [8]), device, torch.int32)
    assert not done.query(), "upload_aligned waited for the queued GPU sleep"
    torch.cuda.synchronize()
    assert [p.tolist() for p in parts] == [[5, 6, 7], [8]]


def _plan(request_id: str, slots: list[int]) -> SequencePlan:
    """A decode step's plan: one new token at the last of ``slots``."""
    return SequencePlan(request_id, [1], len(slots) - 1, slots, True, SamplingParams())


def test_slot_table_sync_does_not_wait_for_queued_gpu_work():
    device = torch.device("cuda")
    table = SlotTable(4, 64, device)
    first = [_plan("a", [3, 4, 5]), _plan("b", [9, 10])]
    rows = table.sync(first)
    done = busy_gpu()
    grown = [_plan("a", [3, 4, 5, 6]), _plan("b", [9, 10, 11])]  # a decode step appends one slot each
    assert table.sync(grown) == rows
    assert not done.query(), "SlotTable.sync waited for the queued GPU sleep"
    torch.cuda.synchronize()
    assert table.table[rows[0], :4].tolist() == [3, 4, 5, 6]
    assert table.table[rows[1], :3].tolist() == [9, 10, 11]


def _planning_waits(backend_name: str, specs, plan) -> bool:
    """Plan a step of ``specs`` sequences (see ``make_sequences``) with ``plan(backend, batch)``
    once to load kernels, then again behind a queued GPU sleep: did the second planning wait?"""
    device = torch.device("cuda")
    shape = Shape(NUM_KV_HEADS * 4, 128)
    sequences = make_sequences(specs, shape, device, shared_len=40)
    backend = make_backend(backend_name, make_pool(sequences, shape, device), shape.num_q_heads)
    batch = make_batch(sequences, device)
    plan(backend, batch)
    done = busy_gpu()
    plan(backend, batch)
    waited = done.query()
    torch.cuda.synchronize()
    return waited


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_decode_planning_does_not_wait_for_queued_gpu_work(backend_name):
    def plan(backend, batch):
        backend.prepare(batch)
        backend.prepare_graph(batch)

    waited = _planning_waits(backend_name, [(True, 30, 1), (True, 5, 1), (False, 70, 1)], plan)
    assert not waited, f"{backend_name}: planning a decode step waited for the queued GPU sleep"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_mixed_step_planning_does_not_wait_for_queued_gpu_work(backend_name):
    """A step with prefill work (an extend over a prefix hit, a fresh prompt) and decodes: planned
    eagerly, with FlashInfer through its prefill wrapper, whose plan copies kv lengths it computes
    on the host."""
    waited = _planning_waits(
        backend_name, [(True, 30, 1), (True, 5, 7), (False, 0, 40)], lambda backend, batch: backend.prepare(batch)
    )
    assert not waited, f"{backend_name}: planning a mixed step waited for the queued GPU sleep"


@pytest.mark.parametrize("backend_name", ["triton", "flashinfer"])
def test_a_cascade_decode_step_does_not_wait_for_queued_gpu_work(backend_name):
    """Grouping the sequences, laying out the cascade and launching its kernels for every layer:
    none of it may wait for the GPU, or large shared-prefix decode steps serialize host and device."""
    if backend_name == "flashinfer":
        pytest.importorskip("flashinfer")
    from tests.gpu.test_attention_backends import new_tokens
    from tests.gpu.test_shared_prefix_attention import SCENARIOS, cascade_backend, make_groups, with_identity

    device = torch.device("cuda")
    shape = Shape(NUM_KV_HEADS * 4, 128)
    sequences = make_groups(SCENARIOS["big"], shape, device)
    backend = cascade_backend(backend_name, make_pool(sequences, shape, device), shape.num_q_heads, 256)
    q, k, v = new_tokens(sequences)
    batches = [with_identity(make_batch(sequences, device), sequences) for _ in range(2)]  # uploads first

    def step(batch):
        assert backend.wants_eager(batch)
        backend.prepare(batch)
        assert backend.step_cascade is not None
        for layer in range(2):
            backend.forward(q, k, v, layer, batch, shape.head_dim**-0.5)

    step(batches[0])  # kernels loaded
    done = busy_gpu()
    step(batches[1])
    waited = done.query()
    torch.cuda.synchronize()
    assert not waited, f"{backend_name}: a cascade decode step waited for the queued GPU sleep"
