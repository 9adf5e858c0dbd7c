"""Benchmarks. Run from the repository root, e.g. ``python -m bench.offline_throughput --help``.

Shared pieces (workload generators, metrics, roofline, Hugging Face baseline, result records) live
in ``bench.harness``; every figure a bench prints is appended to ``bench/results/<workload>.jsonl``.
"""
