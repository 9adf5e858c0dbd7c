"""bench.schedule_sim at a tiny size: the real scheduler reaches the workload's maximum hit rate
under a pool that holds a few prefixes, and each step is charged its roofline."""

from __future__ import annotations

import pytest

from bench import schedule_sim
from bench.harness import workloads
from bench.harness.roofline import DeviceSpeed, ModelShape
from radixserve.config import SchedulerConfig

SHAPE = ModelShape(2, 64, 128, 4, 2, 16, 1000, dtype_bytes=2)
SPEED = DeviceSpeed("modeled", 1e12, 1e14, "bf16")


def _run(policy: str) -> dict:
    requests = workloads.shared_prefix(8, 6, 40, 4, 4, SHAPE.vocab_size, seed=0)
    config = SchedulerConfig(max_running_requests=64, chunked_prefill_size=256, schedule_policy=policy)
    return schedule_sim.simulate(policy, config, 200, requests, SHAPE, SPEED)


def test_lpm_reaches_the_maximum_hit_rate_and_fcfs_does_not():
    maximum = 1 - (8 * 40 + 48 * 4) / (48 * 44)
    lpm, fcfs = _run("lpm"), _run("fcfs")
    assert lpm["hit_rate"] >= 0.95 * maximum, lpm  # retracted requests may come back to an evicted prefix
    assert fcfs["hit_rate"] < lpm["hit_rate"] - 0.1, fcfs
    assert lpm["prefilled"] < fcfs["prefilled"]


def test_a_step_costs_its_weights_read_at_least():
    lpm = _run("lpm")
    assert lpm["device_s"] >= lpm["steps"] * SHAPE.weight_bytes / SPEED.copy_bytes_s


def test_the_cascade_reads_shared_prefixes_once_and_phases_add_up(monkeypatch):
    """``cascade``: decode steps whose requests share prefix slots read them once per group (the
    engine's grouper on the real slot lists), saving exactly the shared tokens' reads; ``phases``
    goes through ``ModelShape.step_seconds`` (its formula: test_bench_metrics.py)."""
    monkeypatch.setattr(schedule_sim, "MIN_SAVED_BYTES", 0)  # this tiny model saves a few bytes a step
    requests = workloads.shared_prefix(4, 8, 300, 4, 16, SHAPE.vocab_size, seed=0)
    config = SchedulerConfig(max_running_requests=64, chunked_prefill_size=4096, schedule_policy="lpm")
    plain = schedule_sim.simulate("lpm", config, 10_000, requests, SHAPE, SPEED)
    cascade = schedule_sim.simulate("lpm", config, 10_000, requests, SHAPE, SPEED, cascade=True)
    phased = schedule_sim.simulate("lpm", config, 10_000, requests, SHAPE, SPEED, cascade=True, phases=True)
    assert cascade["steps"] == plain["steps"] and cascade["prefilled"] == plain["prefilled"]
    assert cascade["device_s"] < plain["device_s"]
    fast = DeviceSpeed("compute-bound", 1e15, 1e12, "bf16")  # FLOPs bind: the phase sum adds the two
    flops_only = schedule_sim.simulate("lpm", config, 10_000, requests, SHAPE, fast, cascade=True)
    flops_phased = schedule_sim.simulate("lpm", config, 10_000, requests, SHAPE, fast, cascade=True, phases=True)
    assert flops_phased["device_s"] == pytest.approx(flops_only["device_s"])  # all compute: nothing to add
    assert phased["device_s"] > cascade["device_s"]  # bandwidth-bound attention after the weights' read
