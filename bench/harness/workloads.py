"""Request shapes. Every prompt is a list of random token ids; every request ignores EOS, so it
produces exactly ``output_len`` tokens. All generators are deterministic for a given seed.

ShareGPT-shaped lengths (the shape SGLang's ``bench_serving --dataset-name sharegpt`` produces,
without downloading the data set): input and output lengths are independent log-normals,
rounded and clipped:

    input  = clip(round(exp(4.882 + 1.0 * N(0, 1))), 4, 2048)   median 132, mean ≈ 215
    output = clip(round(exp(4.921 + 0.9 * N(0, 1))), 4, 1024)   median 137, mean ≈ 200

(mu solved numerically so the clipped means are 215 and 200; the long right tail gives a p99 input
of ≈ 1,350 and a p99 output of ≈ 1,100 before clipping). ``length_scale`` multiplies both for
scaled-down CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAREGPT_INPUT = {"mu": 4.882, "sigma": 1.0, "min": 4, "max": 2048}
SHAREGPT_OUTPUT = {"mu": 4.921, "sigma": 0.9, "min": 4, "max": 1024}


@dataclass
class BenchRequest:
    prompt_ids: list[int]
    output_len: int
    group: int | None = None  # the shared prefix this prompt starts with, where there is one

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


def random_ids(rng: np.random.Generator, length: int, vocab_size: int) -> list[int]:
    return rng.integers(0, vocab_size, size=length).tolist()


def _lognormal_lengths(rng: np.random.Generator, count: int, shape: dict, scale: float) -> np.ndarray:
    raw = np.clip(
        np.round(np.exp(shape["mu"] + shape["sigma"] * rng.standard_normal(count))), shape["min"], shape["max"]
    )
    return np.maximum(np.round(raw * scale), 1).astype(int)


def sharegpt_lengths(count: int, seed: int, length_scale: float = 1.0) -> list[tuple[int, int]]:
    """``count`` (input_len, output_len) pairs from the ShareGPT-shaped distribution above."""
    rng = np.random.default_rng(seed)
    inputs = _lognormal_lengths(rng, count, SHAREGPT_INPUT, length_scale)
    outputs = _lognormal_lengths(rng, count, SHAREGPT_OUTPUT, length_scale)
    return list(zip(inputs.tolist(), outputs.tolist()))


def sharegpt(count: int, vocab_size: int, seed: int, length_scale: float = 1.0) -> list[BenchRequest]:
    rng = np.random.default_rng(seed + 1)
    lengths = sharegpt_lengths(count, seed, length_scale)
    return [BenchRequest(random_ids(rng, i, vocab_size), o) for i, o in lengths]


def fixed_random(count: int, input_len: int, output_len: int, vocab_size: int, seed: int) -> list[BenchRequest]:
    """``count`` random prompts of exactly ``input_len`` tokens, ``output_len`` new tokens each."""
    rng = np.random.default_rng(seed)
    return [BenchRequest(random_ids(rng, input_len, vocab_size), output_len) for _ in range(count)]


def shared_prefix(
    num_groups: int,
    prompts_per_group: int,
    system_len: int,
    question_len: int,
    output_len: int,
    vocab_size: int,
    seed: int,
) -> list[BenchRequest]:
    """SGLang's generated-shared-prefix shape: ``num_groups`` system prompts of ``system_len`` tokens,
    each followed by ``prompts_per_group`` distinct questions of ``question_len`` tokens; shuffled."""
    rng = np.random.default_rng(seed)
    requests = []
    for group in range(num_groups):
        system = random_ids(rng, system_len, vocab_size)
        for _ in range(prompts_per_group):
            requests.append(BenchRequest(system + random_ids(rng, question_len, vocab_size), output_len, group))
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


def shared_fraction(
    num_groups: int,
    prompts_per_group: int,
    prompt_len: int,
    fraction: float,
    output_len: int,
    vocab_size: int,
    seed: int,
) -> list[BenchRequest]:
    """Shared-prefix prompts of a fixed total length whose first ``fraction`` is common to the group."""
    system_len = round(prompt_len * fraction)
    return shared_prefix(
        num_groups, prompts_per_group, system_len, prompt_len - system_len, output_len, vocab_size, seed
    )


def total_tokens(requests: list[BenchRequest]) -> tuple[int, int]:
    """(prompt tokens, output tokens) of a workload."""
    return sum(r.prompt_len for r in requests), sum(r.output_len for r in requests)
