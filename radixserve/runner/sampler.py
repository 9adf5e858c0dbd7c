"""The sampler: one step's logits in, one token (and optionally its logprobs) per sequence out.

Order of operations; every op is one vectorised ``[B, V]`` pass over the rows and is skipped when no
row needs it, so a batch of plain greedy rows costs a single argmax:

1. ``logit_bias``                                                    (``penalties.process_logits``, 1-5)
2. repetition penalty: HF semantics over prompt + output tokens
3. frequency / presence penalties: OpenAI semantics over output tokens only
4. ``min_new_tokens``: stop tokens set to ``-inf`` until the row has generated enough
5. grammar ``vocab_mask``: tokens it does not allow set to ``-inf``
6. logprobs: ``log_softmax`` of these processed logits at temperature 1, before temperature and
   top_k / top_p / min_p. The reported number is then the model's (penalised, constrained) belief,
   independent of the sampling knobs, and comparable across requests; a truncated distribution
   would report 0.0 for every token of a top_k=1-like row and say nothing about the alternatives.
7. greedy rows (``SamplingParams.is_greedy``): argmax, lowest id on ties.
8. sampled rows: divide by temperature → top_k → top_p (the smallest set of most likely tokens whose
   mass is ≥ top_p, never empty) → min_p (drop tokens with prob < min_p * max prob) → draw.

The draw is the exponential race: with ``E_t ~ Exp(1)`` i.i.d., ``argmax_t p_t / E_t`` picks token t
with probability ``p_t``. It is computed as ``argmax(logit / T - log E)``, which needs no softmax and
can never pick a ``-inf`` (masked) token.

Seeds: a row with ``params.seed`` takes its noise from a counter-based hash of
(seed, num_output, token id), so its token depends on nothing else in the batch and needs no
generator state; the hash is integer arithmetic, identical on CPU and GPU (only the final ``log`` may
differ in the last bit). Rows without a seed draw from the sampler's own ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from radixserve.attention.upload import to_device
from radixserve.core.plan import SequencePlan
from radixserve.core.sampling_params import SamplingParams
from radixserve.runner.penalties import is_plain_greedy, process_logits

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
# Odd (so multiplying is a bijection mod 2**32) and < 2**27, so a 32-bit value times it fits in int64.
_HASH_MULTIPLIER = 0x45D9F3B


@dataclass
class SamplingRow:
    """One sampled sequence's view of a step, built by the runner from a ``SequencePlan``."""

    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)  # generated before this step (penalties)
    # EOS + user stop ids; masked (-inf) while num_output < params.min_new_tokens.
    stop_token_ids: tuple[int, ...] = ()
    # Tokens generated before this one, including those still in flight (overlap schedule), whose ids
    # ``output_ids`` lacks. Seeds and min_new_tokens read it. None: ``len(output_ids)``.
    num_output: int | None = None

    def __post_init__(self):
        if self.num_output is None:
            self.num_output = len(self.output_ids)

    @classmethod
    def from_plan(cls, plan: SequencePlan) -> SamplingRow:
        return cls(plan.sampling, plan.prompt_ids, plan.output_ids, plan.stop_token_ids, plan.num_output)


@dataclass
class SampleOutput:
    """Per row of the batch, in order."""

    token_ids: list[int]
    # Logprob of the chosen token, when params.return_logprob.
    logprobs: list[float | None]
    # top_logprobs_num best (id, logprob), best first, when params.return_logprob and top_logprobs_num > 0.
    top_logprobs: list[list[tuple[int, float]] | None]


class PendingSample:
    """Sampled token ids still on their way from the device.

    ``token_ids`` (``[B]``, on the device) may feed the next step's inputs before ``result()`` is
    called. Logprobs are computed when the step is queued, not in ``result()``: the logits may live in
    a buffer the next step overwrites (a replayed CUDA graph). Without logprobs the ids are copied to
    pinned host memory asynchronously and ``result()`` waits on that copy alone: the one host
    synchronisation of a step.
    """

    def __init__(self, logits: torch.Tensor | None, token_ids: torch.Tensor | None, rows: Sequence[SamplingRow]):
        self.token_ids, self.rows = token_ids, rows
        self._logprobs = _queue_logprobs(logits, token_ids, rows) if token_ids is not None else None
        self._host: torch.Tensor | None = None
        self._event = None
        if token_ids is not None and token_ids.is_cuda and self._logprobs is None:
            self._host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            self._host.copy_(token_ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> SampleOutput:
        if self.token_ids is None:
            return SampleOutput([], [], [])
        num_rows = len(self.rows)
        if self._event is None:
            output = SampleOutput(self.token_ids.tolist(), [None] * num_rows, [None] * num_rows)
            if self._logprobs is not None:
                self._logprobs.fill(output)
            return output
        self._event.synchronize()
        return SampleOutput(self._host.tolist(), [None] * num_rows, [None] * num_rows)


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device | str = "cpu", seed: int | None = None):
        """``seed`` seeds the generator of unseeded rows (a random seed when None)."""
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.generator = self._init_generator(seed)
        self._token_ids = torch.arange(vocab_size, device=self.device)  # [V]

    def _init_generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def sample(
        self, logits: torch.Tensor, rows: Sequence[SamplingRow], vocab_mask: torch.Tensor | None = None
    ) -> SampleOutput:
        """Pick one token per row (see the module docstring for the order of operations).

        ``logits``: ``[B, V]`` on the sampler's device, ``V == vocab_size``; not modified. float32, or
        the model's 16-bit dtype: converted to float32 first unless every row takes its argmax of
        logits no bias, penalty or mask rewrites (converting bf16 to float32 is exact, so the ids are
        the same either way; the copy is a [B, V] float32 tensor: 0.5 GB at 1,024 x 128,256).
        ``vocab_mask``: optional ``[B, V]`` bool of allowed tokens; each row must allow at least one.
        """
        return self.sample_async(logits, rows, vocab_mask).result()

    def sample_async(
        self, logits: torch.Tensor, rows: Sequence[SamplingRow], vocab_mask: torch.Tensor | None = None
    ) -> PendingSample:
        """Like ``sample``, but returns as soon as the work is queued on the device; ``result()`` waits."""
        self._check_shapes(logits, rows)
        if not rows:
            return PendingSample(None, None, rows)
        if logits.dtype != torch.float32 and (vocab_mask is not None or not all(map(is_plain_greedy, rows))):
            logits = logits.float()
        logits = process_logits(logits, rows, vocab_mask)  # [B, V]
        return PendingSample(logits, self._choose(logits, rows), rows)

    def _check_shapes(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
        if logits.dim() != 2 or logits.shape != (len(rows), self.vocab_size):
            raise ValueError(f"logits must be [{len(rows)}, {self.vocab_size}], got {list(logits.shape)}")

    def _choose(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """``[B]`` token ids: argmax for greedy rows, a draw for the others."""
        sampled = [i for i, row in enumerate(rows) if not row.params.is_greedy]
        if not sampled:
            return logits.argmax(dim=-1)
        if len(sampled) == len(rows):
            return self._draw(logits, rows)
        token_ids = logits.argmax(dim=-1)  # [B]
        index = to_device(sampled, logits.device)  # [S]
        token_ids[index] = self._draw(logits[index], [rows[i] for i in sampled])
        return token_ids

    def _draw(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """``[S]`` token ids drawn from non-greedy rows' ``[S, V]`` processed logits."""
        temperature = to_device([row.params.temperature for row in rows], logits.device, torch.float32)  # [S]
        scaled = truncate(logits / temperature[:, None], rows)  # [S, V]
        noise = self._exponential_noise(rows)  # [S, V]
        return (scaled - noise.log()).argmax(dim=-1)

    def _exponential_noise(self, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """``[S, V]`` i.i.d. Exp(1): hashed from (seed, step) for seeded rows, else from ``self.generator``."""
        seeded = [i for i, row in enumerate(rows) if row.params.seed is not None]
        if not seeded:
            return self._generator_noise(len(rows))
        keys = [_row_key(rows[i].params.seed, rows[i].num_output) for i in seeded]
        if len(seeded) == len(rows):
            return seeded_exponential(keys, self._token_ids)
        unseeded = [i for i, row in enumerate(rows) if row.params.seed is None]
        noise = torch.empty(len(rows), self.vocab_size, device=self.device)  # [S, V]
        noise[to_device(seeded, self.device)] = seeded_exponential(keys, self._token_ids)
        noise[to_device(unseeded, self.device)] = self._generator_noise(len(unseeded))
        return noise

    def _generator_noise(self, num_rows: int) -> torch.Tensor:
        noise = torch.empty(num_rows, self.vocab_size, device=self.device)  # [U, V]
        noise.exponential_(generator=self.generator)
        # A zero would make -log(E) = +inf and turn masked tokens into NaN scores.
        return noise.clamp_min_(torch.finfo(noise.dtype).tiny)


def truncate(scaled: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Apply top_k, then top_p, then min_p to ``[S, V]`` temperature-scaled logits (dropped → ``-inf``)."""
    vocab_size = scaled.shape[1]
    top_k = [row.params.top_k if row.params.top_k > 0 else vocab_size for row in rows]
    top_p = [row.params.top_p for row in rows]
    min_p = [row.params.min_p for row in rows]
    if any(k < vocab_size for k in top_k) or any(p < 1.0 for p in top_p):
        scaled = _top_k_top_p(scaled, top_k, top_p)
    if any(p > 0.0 for p in min_p):
        scaled = _min_p(scaled, min_p)
    return scaled


def _top_k_top_p(scaled: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    device = scaled.device
    # Stable, so that tied logits are cut the same way whatever the batch looks like.
    sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)  # [S, V] each
    positions = torch.arange(scaled.shape[1], device=device)[None, :]  # [1, V]
    keep = positions < to_device(top_k, device)[:, None]  # [S, V], sorted order
    probs = sorted_logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)  # renormalised after top_k
    mass_before = probs.cumsum(dim=-1) - probs  # exactly 0 at position 0, so one token always stays
    top_p_column = to_device(top_p, device, torch.float32)[:, None]  # [S, 1]
    # top_p == 1 keeps everything, even tail tokens whose float cumsum rounds up to 1.
    keep &= (mass_before < top_p_column) | (top_p_column >= 1.0)
    keep_in_vocab_order = torch.zeros_like(keep).scatter_(1, order, keep)  # [S, V]
    return scaled.masked_fill(~keep_in_vocab_order, float("-inf"))


def _min_p(scaled: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Drop tokens with ``p < min_p * p_max``, i.e. ``logit < max_logit + log(min_p)`` (min_p = 0 drops none)."""
    log_min_p = to_device(min_p, scaled.device, torch.float32).log()[:, None]  # [S, 1]
    threshold = scaled.amax(dim=-1, keepdim=True) + log_min_p  # [S, 1]
    return scaled.masked_fill(scaled < threshold, float("-inf"))


def seeded_exponential(keys: Sequence[tuple[int, int]], token_ids: torch.Tensor) -> torch.Tensor:
    """``[S, V]`` Exp(1) noise that is a pure function of each row's key pair and the token id."""
    key = to_device(keys, token_ids.device)  # [S, 2], values < 2**32
    bits = _mix32(_mix32(token_ids[None, :] ^ key[:, :1]) ^ key[:, 1:])  # [S, V], values < 2**32
    # 23 bits on a half-offset grid: uniform in [2**-24, 1 - 2**-24], exact in float32, never 0 or 1.
    uniform = ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23
    return -uniform.log()


def _row_key(seed: int, step: int) -> tuple[int, int]:
    """Two 32-bit keys from (seed, step); ``step`` is the row's ``num_output``."""
    key = _splitmix64(_splitmix64(seed & _MASK64) ^ step)
    return key & _MASK32, key >> 32


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijection on 32-bit values held in int64 (xorshift-multiply rounds; no int64 overflow)."""
    x = ((x >> 16) ^ x) * _HASH_MULTIPLIER & _MASK32
    x = ((x >> 16) ^ x) * _HASH_MULTIPLIER & _MASK32
    return (x >> 16) ^ x


class _QueuedLogprobs:
    """Device tensors of the rows that asked for logprobs; ``fill`` copies them into an output."""

    def __init__(self, wanted: list[int], chosen: torch.Tensor, top: tuple | None, nums: list[int]):
        self.wanted, self.chosen, self.top, self.nums = wanted, chosen, top, nums

    def fill(self, output: SampleOutput) -> None:
        chosen = self.chosen.tolist()  # [W]
        top = _top_logprobs(self.top, self.nums)
        for j, i in enumerate(self.wanted):
            output.logprobs[i] = chosen[j]
            output.top_logprobs[i] = top[j]


def _queue_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, rows: Sequence[SamplingRow]
) -> _QueuedLogprobs | None:
    wanted = [i for i, row in enumerate(rows) if row.params.return_logprob]
    if not wanted:
        return None
    index = to_device(wanted, logits.device)  # [W]
    logprobs = logits[index].float().log_softmax(dim=-1)  # [W, V], temperature 1
    chosen = logprobs.gather(1, token_ids[index][:, None]).squeeze(1)  # [W]
    nums = [rows[i].params.top_logprobs_num for i in wanted]
    num_top = min(max(nums), logprobs.shape[1])
    top = logprobs.topk(num_top, dim=-1) if num_top > 0 else None  # ([W, num_top], [W, num_top]), best first
    return _QueuedLogprobs(wanted, chosen, top, nums)


def _top_logprobs(top: tuple | None, nums: list[int]) -> list[list[tuple[int, float]] | None]:
    """For each wanted row, its ``nums[j]`` best (id, logprob), best first (None for 0)."""
    if top is None:
        return [None] * len(nums)
    values, ids = top[0].tolist(), top[1].tolist()
    return [list(zip(ids[j][:k], values[j][:k])) if k > 0 else None for j, k in enumerate(nums)]
