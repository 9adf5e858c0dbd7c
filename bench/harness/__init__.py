"""The benchmark harness: one definition of workloads, metrics, roofline and records for every bench.

- ``workloads``: request shapes (ShareGPT-shaped lengths, fixed random, shared prefix, no sharing).
- ``prefix_index``: the best hit rate a workload allows (tokens shared with an earlier request).
- ``latency_stats``: TTFT / ITL / TPOT and throughput with SGLang ``bench_serving``'s definitions.
- ``roofline``: device speed measured in the run, and the lower bound a workload cannot beat.
- ``hf_baseline``: Hugging Face ``generate`` on the same config and device.
- ``engine_runs``: the offline engine driven step by step in a child process.
- ``http_client``: streaming ``/generate`` over aiohttp, Poisson arrivals.
- ``records`` and ``table``: the JSONL result lines and the table printed last.
- ``cli``: presets and the flags every bench shares.
"""
