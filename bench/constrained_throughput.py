"""Constrained versus unconstrained decoding at the same batch size (embedded model, CPU by default).

Batch of 32 greedy requests, 128 new tokens each with ``ignore_eos`` off and ``min_new_tokens`` =
``max_new_tokens`` so both runs decode the same number of steps: once free, once under a JSON schema
whose free-text field keeps the grammar open (so every step really is masked). Prints output tok/s
for both, the ratio, and the grammar's own per-step cost (mask fill + bitmask conversion) measured
inside the engine.

    .venv/bin/python bench/constrained_throughput.py [--batch 32] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from radixserve import Engine
from radixserve.engine import grammar_manager

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "notes": {"type": "array", "items": {"type": "string", "pattern": "^[a-z ]{1,40}$"}, "maxItems": 64},
    },
    "required": ["id", "notes"],
}


class _MaskTimer:
    """Wraps GrammarManager._fill to time each step's mask work (it runs in a helper thread)."""

    def __init__(self):
        self.samples: list[float] = []
        self._original = grammar_manager.GrammarManager._fill

    def install(self) -> None:
        timer = self

        def timed(manager, sampled):
            start = time.perf_counter()
            out = timer._original(manager, sampled)
            timer.samples.append(time.perf_counter() - start)
            return out

        grammar_manager.GrammarManager._fill = timed


def run(engine: Engine, prompts: list[str], params: dict) -> float:
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are printed")
    args = parser.parse_args()
    engine = Engine(max_total_tokens=32768)
    prompts = [
        engine.tokenizer.apply_chat_template([{"role": "user", "content": f"Write notes about topic {i} as JSON."}])
        for i in range(args.batch)
    ]
    free = {"temperature": 0, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    constrained = {**free, "json_schema": json.dumps(SCHEMA)}
    engine.generate(prompts[:2], {**constrained, "max_new_tokens": 4, "min_new_tokens": 0})  # compile + warm
    timer = _MaskTimer()
    timer.install()
    runs: dict[str, list[float]] = {"free": [], "constrained": []}
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
        runs["free"].append(run(engine, prompts, free))
        runs["constrained"].append(run(engine, prompts, constrained))
    free_tok_s, constrained_tok_s = statistics.median(runs["free"]), statistics.median(runs["constrained"])
    mask_ms = 1e3 * statistics.median(timer.samples)
    print(f"\nbatch {args.batch}, {args.new_tokens} new tokens, greedy, embedded model, median of {args.repeats}")
    print(f"{'run':14} {'out tok/s':>10}")
    print(f"{'unconstrained':14} {free_tok_s:10.1f}")
    print(f"{'json_schema':14} {constrained_tok_s:10.1f}")
    print(
        f"constrained / unconstrained: {100 * constrained_tok_s / free_tok_s:.1f}%  "
        f"(mask fill + conversion per step: median {mask_ms:.2f} ms over {len(timer.samples)} steps, "
        "overlapped with the forward pass)"
    )


if __name__ == "__main__":
    main()
