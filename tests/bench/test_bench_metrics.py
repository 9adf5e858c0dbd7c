"""Latency metrics follow SGLang bench_serving's definitions; roofline arithmetic; record shape."""

from __future__ import annotations

import pytest

from bench.harness.cli import server_flags
from bench.harness.latency_stats import RequestTiming, summarize
from bench.harness.records import RECORD_KEYS, make_record
from bench.harness.report import Reporter
from bench.harness.roofline import DeviceSpeed, ModelShape, RooflineRequest, offline_roofline

LLAMA_8B = ModelShape(32, 4096, 14336, 32, 8, 128, 128256, dtype_bytes=2)


def _timing(send, chunks, cached=0, prompt_len=10):
    timing = RequestTiming(prompt_len, send, cached_tokens=cached)
    for when, tokens in chunks:
        timing.add_chunk(when, tokens)
    timing.finish_time = chunks[-1][0]
    return timing


def test_ttft_itl_tpot_of_one_request():
    timing = _timing(1.0, [(1.5, 1), (1.6, 1), (1.8, 2)])
    assert timing.ttft == pytest.approx(0.5)
    assert timing.itls == pytest.approx([0.1, 0.2])
    assert timing.output_len == 4
    assert timing.tpot == pytest.approx((0.8 - 0.5) / 3)
    assert _timing(0.0, [(0.2, 1)]).tpot is None


def test_summary_pools_itls_and_counts_tokens():
    timings = [
        _timing(0.0, [(1.0, 1), (2.0, 1)], cached=4),
        _timing(0.0, [(3.0, 1), (3.5, 1), (4.0, 1)]),
        RequestTiming(10, 0.0, error="HTTP 500"),
    ]
    summary = summarize(timings)
    assert summary["num_requests"] == 3 and summary["num_completed"] == 2
    assert summary["duration_s"] == 4.0
    assert summary["output_tokens"] == 5 and summary["output_tok_s"] == 1.25
    assert summary["total_tok_s"] == pytest.approx((20 + 5) / 4)
    assert summary["hit_rate"] == 0.2
    assert summary["ttft_p50_ms"] == pytest.approx(2000.0)
    assert summary["itl_p50_ms"] == pytest.approx(500.0)  # gaps 1.0, 0.5, 0.5


def test_a_record_of_a_run_with_failed_requests_says_so(tmp_path, capsys):
    timings = [_timing(0.0, [(1.0, 1)]), RequestTiming(10, 0.0, error="step failed")]
    reporter = Reporter("m", "card", "cpu", "suite", tmp_path, write=True)
    record = reporter.record("w", summarize(timings), notes="pool 64")
    assert record["notes"] == "FAILED: 1 of 2 requests did not complete; pool 64; suite"
    assert "WARNING: w: FAILED: 1 of 2" in capsys.readouterr().err
    assert reporter.record("w", summarize(timings[:1]))["notes"] == "suite"


def test_llama_8b_shape():
    assert LLAMA_8B.kv_bytes_per_token == 128 * 1024
    # 8.03 B parameters minus the 0.525 B input embedding (and the tiny norms)
    assert LLAMA_8B.linear_params == pytest.approx(7.50e9, rel=0.01)


def test_decode_step_is_bound_by_the_slower_of_bytes_and_flops():
    speed = DeviceSpeed("card", copy_bytes_s=1e12, matmul_flop_s=1e15, matmul_desc="-")
    weights_only = LLAMA_8B.decode_step_seconds(speed, 1, 0)
    assert weights_only == pytest.approx(LLAMA_8B.weight_bytes / 1e12)
    big_batch = LLAMA_8B.decode_step_seconds(speed, 4096, 0)
    assert big_batch == pytest.approx(2 * LLAMA_8B.linear_params * 4096 / 1e15)


def test_the_phase_sum_bound_adds_compute_bound_projections_to_bandwidth_bound_attention():
    """At a large batch over long contexts the projections are compute-bound and attention is
    bandwidth-bound: the whole-step bound takes the larger, the phase sum adds them."""
    speed = DeviceSpeed("card", copy_bytes_s=4e12, matmul_flop_s=8e14, matmul_desc="-")
    batch, context = 1024, 1024 * 2048
    linear = 2 * LLAMA_8B.linear_params * batch / 8e14
    attention = context * LLAMA_8B.kv_bytes_per_token / 4e12
    phased = LLAMA_8B.decode_step_seconds(speed, batch, context, phases=True)
    assert phased == pytest.approx(linear + attention)
    assert LLAMA_8B.decode_step_seconds(speed, batch, context) < phased
    # one sequence: the weights' read bounds the projections, and the phases add up to the whole step
    assert LLAMA_8B.decode_step_seconds(speed, 1, 1000, phases=True) == pytest.approx(
        LLAMA_8B.decode_step_seconds(speed, 1, 1000)
    )


def test_offline_roofline_batches_within_the_limit():
    speed = DeviceSpeed("card", copy_bytes_s=1e12, matmul_flop_s=1e15, matmul_desc="-")
    requests = [RooflineRequest(10, 0, 5) for _ in range(4)]
    one_wave = offline_roofline(LLAMA_8B, speed, requests, max_batch=4, pool_tokens=10**6)
    two_waves = offline_roofline(LLAMA_8B, speed, requests, max_batch=2, pool_tokens=10**6)
    memory_bound = offline_roofline(LLAMA_8B, speed, requests, max_batch=4, pool_tokens=30)
    assert one_wave.num_decode_steps == 4 and one_wave.mean_batch == 4
    assert two_waves.num_decode_steps == 8 and memory_bound.num_decode_steps == 8
    assert two_waves.output_tok_s < one_wave.output_tok_s


def test_shared_prefix_is_read_once_per_step():
    speed = DeviceSpeed("card", copy_bytes_s=1e12, matmul_flop_s=1e18, matmul_desc="-")
    own = [RooflineRequest(1000, 0, 3, group=None) for _ in range(2)]
    grouped = [RooflineRequest(1000, 0, 3, 0, group_prefix_len=990), RooflineRequest(1000, 990, 3, 0, 990)]
    assert offline_roofline(LLAMA_8B, speed, grouped, 2, 10**6).decode_seconds < (
        offline_roofline(LLAMA_8B, speed, own, 2, 10**6).decode_seconds
    )


def test_records_carry_every_required_key():
    record = make_record("w", "m", "card", "abc", {"output_tok_s": 1.0, "hit_rate": 0.5}, notes="n")
    assert list(record)[: len(RECORD_KEYS)] == list(RECORD_KEYS)
    assert record["ttft_p50_ms"] is None and record["hit_rate"] == 0.5 and record["notes"] == "n"


def test_server_flags_forward_engine_args():
    flags = server_flags({"model_path": "m", "load_format": "dummy", "disable_radix_cache": True, "x": None})
    assert flags == ["--model-path", "m", "--load-format", "dummy", "--disable-radix-cache"]


def test_the_cache_off_bound_prefills_everything_and_reads_every_context():
    """The shared-prefix workload's bound with a prefix cache and without one (the speedup two
    engines at their rooflines would show): H200 figures of the fourth session's bench runs."""
    from bench.harness import workloads
    from bench.harness.prefix_index import prefix_hits
    from bench.harness.roofline import workload_roofline

    speed = DeviceSpeed("H200", 4245e9, 783.36e12, "8192^3 bfloat16")
    requests = workloads.shared_prefix(64, 16, 2048, 128, 256, 49152, 0)
    hits = prefix_hits([r.prompt_ids for r in requests])
    on = workload_roofline(LLAMA_8B, speed, requests, hits, 1024, 845_197)
    off = workload_roofline(LLAMA_8B, speed, requests, hits, 1024, 845_197, cache=False)
    zero_hits = offline_roofline(
        LLAMA_8B, speed, [RooflineRequest(r.prompt_len, 0, r.output_len) for r in requests], 1024, 845_197
    )
    assert off.seconds == pytest.approx(zero_hits.seconds)
    assert off.prefill_seconds > 8 * on.prefill_seconds  # 2.23 M prompt tokens against 262 k
    assert off.mean_batch < 400 < on.mean_batch  # without sharing the pool holds ~347 contexts of 2,432
    assert 6.0 < off.seconds / on.seconds < 6.5


def test_the_flop_only_bound_is_below_the_roofline_and_above_the_prefill():
    from bench.harness import workloads
    from bench.harness.roofline import workload_roofline
    from bench.roofline_bounds import flop_bound_seconds

    speed = DeviceSpeed("H100", 3.0e12, 740e12, "bf16")
    requests = workloads.sharegpt(200, 128256, 0)
    no_hits = [0] * len(requests)
    roofline = workload_roofline(LLAMA_8B, speed, requests, no_hits, 1024, 10**6)
    flops = flop_bound_seconds(LLAMA_8B, speed, requests, no_hits)
    assert roofline.prefill_seconds < flops < roofline.seconds
