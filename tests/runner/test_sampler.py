"""Sampler and logit processing: exact checks, naive references, and seeded statistics.

Every draw here is seeded (row seeds or the sampler's generator seed), so the statistical tests are
deterministic: they cannot flake, and a bound is still derived from the sample size.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.core.sampling_params import SamplingParams
from radixserve.runner.penalties import process_logits
from radixserve.runner.sampler import Sampler, SamplingRow

NUM_DRAWS = 5000
# Per-token bound on |empirical - target|: 5 standard deviations of a binomial proportion.
SIGMAS = 5.0


def row(prompt=(), output=(), stop=(), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), list(prompt), list(output), tuple(stop))


def random_logits(num_rows: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, vocab_size, generator=torch.Generator().manual_seed(seed)) * 2.0


def draw_many(logits_row: torch.Tensor, num_draws: int = NUM_DRAWS, **params) -> torch.Tensor:
    """Sample one logits row ``num_draws`` times, each draw its own seeded row of one batch."""
    sampler = Sampler(logits_row.shape[0], seed=0)
    rows = [row(seed=s, **params) for s in range(num_draws)]
    out = sampler.sample(logits_row.expand(num_draws, -1).contiguous(), rows)
    return torch.tensor(out.token_ids)


def assert_matches(token_ids: torch.Tensor, target: torch.Tensor) -> None:
    """Never a token outside target's support; inside it, frequencies within SIGMAS binomial sd."""
    num_draws = token_ids.numel()
    allowed = target > 0
    assert allowed[token_ids].all(), f"drew a token outside {allowed.nonzero().flatten().tolist()}"
    empirical = torch.bincount(token_ids, minlength=target.numel()).double() / num_draws
    for token_id in allowed.nonzero().flatten().tolist():
        p = target[token_id].item()
        bound = SIGMAS * math.sqrt(p * (1 - p) / num_draws) + 1e-9
        assert abs(empirical[token_id].item() - p) <= bound, (token_id, empirical[token_id].item(), p)


def renormalised(probs: torch.Tensor, keep: list[int]) -> torch.Tensor:
    target = torch.zeros_like(probs, dtype=torch.float64)
    target[keep] = probs[keep].double()
    return target / target.sum()


# --- greedy ------------------------------------------------------------------------------------


def test_greedy_rows_take_the_argmax():
    logits = random_logits(6, 32)
    out = Sampler(32, seed=0).sample(logits, [row(temperature=0.0) for _ in range(6)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 6 and out.top_logprobs == [None] * 6


@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0, 100.0])
def test_top_k_one_is_greedy_at_any_temperature(temperature):
    logits = random_logits(16, 50, seed=1)
    rows = [row(temperature=temperature, top_k=1, seed=i if i % 2 else None) for i in range(16)]
    assert Sampler(50, seed=0).sample(logits, rows).token_ids == logits.argmax(dim=-1).tolist()


def test_temperature_below_epsilon_is_greedy():
    logits = random_logits(8, 40, seed=2)
    rows = [row(temperature=1e-7) for _ in range(8)]
    assert Sampler(40, seed=0).sample(logits, rows).token_ids == logits.argmax(dim=-1).tolist()


def test_input_logits_are_not_modified():
    logits = random_logits(3, 10)
    before = logits.clone()
    rows = [
        row(logit_bias={1: 5.0}, repetition_penalty=1.5, prompt=[2], output=[3, 3], frequency_penalty=0.5),
        row(temperature=0.7, top_p=0.5, min_new_tokens=2, stop=[4], seed=1),
        row(temperature=2.0, top_k=3, min_p=0.1, return_logprob=True, top_logprobs_num=3),
    ]
    Sampler(10, seed=0).sample(logits, rows, vocab_mask=torch.rand(3, 10) > 0.3)
    assert torch.equal(logits, before)


def test_wrong_logits_shape_is_an_error():
    with pytest.raises(ValueError, match="logits must be"):
        Sampler(10).sample(torch.zeros(2, 11), [row(), row()])


def test_empty_batch():
    out = Sampler(10).sample(torch.zeros(0, 10), [])
    assert out.token_ids == [] and out.logprobs == [] and out.top_logprobs == []


# --- distributions ----------------------------------------------------------------------------

LOGITS_8 = torch.tensor([2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, 0.9])


def test_plain_sampling_matches_softmax():
    assert_matches(draw_many(LOGITS_8, temperature=1.0), torch.softmax(LOGITS_8.double(), dim=0))


def test_temperature_scales_the_distribution():
    target = torch.softmax(LOGITS_8.double() / 0.5, dim=0)
    assert_matches(draw_many(LOGITS_8, temperature=0.5), target)


def test_top_k_keeps_the_k_most_likely():
    probs = torch.softmax(LOGITS_8 / 1.5, dim=0)
    assert_matches(draw_many(LOGITS_8, temperature=1.5, top_k=3), renormalised(probs, [0, 1, 2]))


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.softmax(LOGITS_8, dim=0)  # sorted ids 0, 1, 2, 7, 3, ...
    cumulative = probs[[0, 1, 2, 7]].cumsum(dim=0)
    assert cumulative[2] < 0.8 <= cumulative[3]
    assert_matches(draw_many(LOGITS_8, top_p=0.8), renormalised(probs, [0, 1, 2, 7]))


def test_top_p_always_keeps_the_best_token():
    assert_matches(draw_many(LOGITS_8, top_p=1e-6, num_draws=200), renormalised(torch.ones(8), [0]))


def test_top_k_then_top_p_uses_the_renormalised_top_k_mass():
    probs = torch.softmax(LOGITS_8, dim=0)
    top3 = probs[[0, 1, 2]] / probs[[0, 1, 2]].sum()
    assert top3[0] < 0.7 <= top3[0] + top3[1]
    assert probs[0] + probs[1] < 0.7  # without renormalising, token 2 would be kept too
    assert_matches(draw_many(LOGITS_8, top_k=3, top_p=0.7), renormalised(probs, [0, 1]))


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    probs = torch.softmax(LOGITS_8, dim=0)
    keep = (probs >= 0.3 * probs.max()).nonzero().flatten().tolist()
    assert keep == [0, 1, 2, 7]
    assert_matches(draw_many(LOGITS_8, min_p=0.3), renormalised(probs, keep))


def test_min_p_one_keeps_exactly_the_tied_best_tokens():
    logits = torch.tensor([1.0, 3.0, 0.0, 3.0])
    assert_matches(draw_many(logits, min_p=1.0, num_draws=2000), renormalised(torch.ones(4), [1, 3]))


def test_top_p_and_min_p_on_a_16_token_vocab_with_the_generator():
    logits = torch.linspace(2.0, -2.0, 16)
    sampler = Sampler(16, seed=123)  # unseeded rows: the sampler's generator
    rows = [row(top_p=0.7, min_p=0.2) for _ in range(NUM_DRAWS)]
    token_ids = torch.tensor(sampler.sample(logits.expand(NUM_DRAWS, -1).contiguous(), rows).token_ids)
    probs = torch.softmax(logits, dim=0)
    mass_before = probs.cumsum(dim=0) - probs
    keep = [t for t in range(16) if mass_before[t] < 0.7 and probs[t] >= 0.2 * probs[0]]
    assert_matches(token_ids, renormalised(probs, keep))


# --- penalties against a naive reference ---------------------------------------------------------


def naive_process(logits: list[float], r: SamplingRow) -> list[float]:
    """Straight from the definitions, one token at a time."""
    p = r.params
    out = list(logits)
    for token_id, bias in p.logit_bias.items():
        out[token_id] += bias
    seen = set(r.prompt_ids) | set(r.output_ids)
    for t in seen:
        out[t] = out[t] / p.repetition_penalty if out[t] > 0 else out[t] * p.repetition_penalty
    for t in set(r.output_ids):
        out[t] -= p.frequency_penalty * r.output_ids.count(t) + p.presence_penalty
    if len(r.output_ids) < p.min_new_tokens:
        for t in r.stop_token_ids:
            out[t] = float("-inf")
    return out


VOCAB = 12
token_lists = st.lists(st.integers(0, VOCAB - 1), max_size=10)  # a small vocab forces repeats
penalised_rows = st.builds(
    row,
    prompt=token_lists,
    output=token_lists,
    stop=st.lists(st.integers(0, VOCAB - 1), max_size=3),
    repetition_penalty=st.sampled_from([1.0, 0.5, 1.3, 2.0]),
    frequency_penalty=st.sampled_from([0.0, -1.5, 0.4, 2.0]),
    presence_penalty=st.sampled_from([0.0, -0.7, 1.0]),
    min_new_tokens=st.integers(0, 4),
    max_new_tokens=st.just(16),
    logit_bias=st.dictionaries(st.integers(0, VOCAB - 1), st.floats(-100, 100), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(penalised_rows, min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_processing_matches_the_naive_reference(rows, seed):
    logits = random_logits(len(rows), VOCAB, seed)
    got = process_logits(logits, rows)
    want = torch.tensor([naive_process(logits[i].tolist(), r) for i, r in enumerate(rows)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 0.5, -0.5, 3.0]])
    discourage = process_logits(logits, [row(prompt=[0, 1], output=[2, 3, 3], repetition_penalty=2.0)])
    assert discourage.tolist() == [[1.0, -4.0, 0.25, -1.0, 3.0]]
    encourage = process_logits(logits, [row(prompt=[0, 1], output=[2, 3, 3], repetition_penalty=0.5)])
    assert encourage.tolist() == [[4.0, -1.0, 1.0, -0.25, 3.0]]


def test_frequency_counts_repeats_presence_does_not_and_neither_sees_the_prompt():
    logits = torch.zeros(1, 5)
    history = {"prompt": [0, 0, 4], "output": [3, 3, 3, 1]}
    frequency = process_logits(logits, [row(**history, frequency_penalty=0.5)])
    assert frequency.tolist() == [[0.0, -0.5, 0.0, -1.5, 0.0]]
    presence = process_logits(logits, [row(**history, presence_penalty=0.5)])
    assert presence.tolist() == [[0.0, -0.5, 0.0, -0.5, 0.0]]


def test_logit_bias_is_added_and_can_flip_the_greedy_choice():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    assert process_logits(logits, [row(logit_bias={1: 2.5, 3: -1.0})]).tolist() == [[3.0, 3.5, 0.0, -2.0]]
    assert Sampler(4).sample(logits, [row(temperature=0.0, logit_bias={2: 10.0})]).token_ids == [2]


def test_rows_without_penalties_are_untouched_in_a_penalised_batch():
    logits = random_logits(2, 8)
    got = process_logits(logits, [row(output=[1, 1], frequency_penalty=1.0, repetition_penalty=1.5), row(output=[1])])
    assert torch.equal(got[1], logits[1])


# --- min_new_tokens and the grammar mask -----------------------------------------------------------


def test_min_new_tokens_masks_stop_tokens_until_reached():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])  # stop tokens 1 and 3 are the two best
    sampler = Sampler(4)

    def greedy_after(num_output: int) -> int:
        r = row(output=[2] * num_output, stop=(1, 3), temperature=0.0, min_new_tokens=2)
        return sampler.sample(logits, [r]).token_ids[0]

    assert [greedy_after(n) for n in range(4)] == [2, 2, 1, 1]


def test_min_new_tokens_holds_under_sampling():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]]).expand(500, -1).contiguous()
    rows = [row(stop=(1, 3), temperature=3.0, min_new_tokens=1, seed=s) for s in range(500)]
    token_ids = Sampler(4).sample(logits, rows).token_ids
    assert set(token_ids) == {0, 2}


def test_vocab_mask_never_lets_a_disallowed_token_through():
    num_rows, vocab_size = 400, 16
    logits = random_logits(num_rows, vocab_size, seed=3)
    mask = torch.rand(num_rows, vocab_size, generator=torch.Generator().manual_seed(4)) < 0.25
    mask[torch.arange(num_rows), torch.arange(num_rows) % vocab_size] = True  # every row allows something
    rows = [row(temperature=100.0, seed=i if i % 2 else None) for i in range(num_rows)]
    rows[::7] = [row(temperature=0.0)] * len(rows[::7])
    token_ids = torch.tensor(Sampler(vocab_size, seed=0).sample(logits, rows, vocab_mask=mask).token_ids)
    assert mask[torch.arange(num_rows), token_ids].all()
    greedy = torch.arange(0, num_rows, 7)
    masked_argmax = logits.masked_fill(~mask, float("-inf")).argmax(dim=-1)
    assert torch.equal(token_ids[greedy], masked_argmax[greedy])


def test_grammar_wins_when_it_allows_only_a_forbidden_stop_token():
    logits = torch.tensor([[5.0, 0.0, 1.0], [5.0, 0.0, 1.0]])
    mask = torch.tensor([[False, True, False], [False, True, True]])
    rows = [row(stop=(1,), min_new_tokens=3, temperature=0.0)] * 2
    assert Sampler(3).sample(logits, rows, vocab_mask=mask).token_ids == [1, 2]


def test_vocab_mask_allowing_nothing_is_an_error():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="allows no token"):
        Sampler(2).sample(torch.zeros(2, 2), [row(), row()], vocab_mask=mask)


# --- seeds ---------------------------------------------------------------------------------------


def test_seeded_rows_do_not_depend_on_batch_position_or_composition():
    vocab_size = 64
    logits = random_logits(1, vocab_size, seed=5)
    params = {"temperature": 1.3, "top_p": 0.95}
    alone = [Sampler(vocab_size).sample(logits, [row(seed=s, **params)]).token_ids[0] for s in range(40)]
    for position, batch_size in [(0, 3), (2, 3), (5, 9)]:
        others = random_logits(batch_size, vocab_size, seed=batch_size)
        in_batch = []
        for s in range(40):
            batch_logits = others.clone()
            batch_logits[position] = logits[0]
            rows = [row(temperature=2.0, top_k=5, seed=1000 + i if i % 2 else None) for i in range(batch_size)]
            rows[position] = row(seed=s, **params)
            in_batch.append(Sampler(vocab_size).sample(batch_logits, rows).token_ids[position])
        assert in_batch == alone
    assert len(set(alone)) > 5  # different seeds give different samples


def test_seeded_rows_repeat_across_calls_and_vary_with_the_step():
    logits = torch.zeros(1, 1000)  # uniform: any dependence on (seed, step) shows up as a new token
    sampler = Sampler(1000)

    def draw(seed: int, step: int) -> int:
        return sampler.sample(logits, [row(seed=seed, output=[0] * step)]).token_ids[0]

    assert [draw(7, step) for step in range(20)] == [draw(7, step) for step in range(20)]
    assert len({draw(7, step) for step in range(20)}) >= 15
    assert len({draw(seed, 0) for seed in range(20)}) >= 15
    assert draw(-3, 0) == draw(-3, 0)


def test_unseeded_rows_vary_across_draws_and_calls():
    logits = torch.zeros(50, 1000)
    sampler = Sampler(1000)
    first = sampler.sample(logits, [row() for _ in range(50)]).token_ids
    second = sampler.sample(logits, [row() for _ in range(50)]).token_ids
    assert len(set(first)) >= 40
    assert first != second


def test_the_sampler_seed_makes_unseeded_rows_reproducible():
    logits = torch.zeros(50, 1000)
    rows = [row() for _ in range(50)]
    assert Sampler(1000, seed=9).sample(logits, rows).token_ids == Sampler(1000, seed=9).sample(logits, rows).token_ids


# --- logprobs ------------------------------------------------------------------------------------


def test_logprob_of_the_chosen_token_is_log_softmax_of_the_processed_logits():
    logits = random_logits(4, 30, seed=6)
    rows = [
        row(return_logprob=True, temperature=0.0),
        row(return_logprob=True, temperature=0.8, top_k=4, seed=1),
        row(return_logprob=True, output=[3, 3], frequency_penalty=1.0, seed=2),
        row(temperature=0.0),
    ]
    out = Sampler(30, seed=0).sample(logits, rows)
    reference = process_logits(logits, rows).log_softmax(dim=-1)
    for i in range(3):
        assert out.logprobs[i] == pytest.approx(reference[i, out.token_ids[i]].item(), abs=1e-6)
    assert out.logprobs[3] is None and out.top_logprobs == [None] * 4


def test_top_logprobs_are_sorted_of_the_asked_length_and_start_at_the_greedy_token():
    logits = random_logits(3, 30, seed=7)
    rows = [
        row(return_logprob=True, top_logprobs_num=5, temperature=0.0),
        row(return_logprob=True, top_logprobs_num=1, temperature=0.0),
        row(return_logprob=True, top_logprobs_num=20, temperature=1.0, seed=3),
    ]
    out = Sampler(30).sample(logits, rows)
    reference = logits.log_softmax(dim=-1)
    for i, r in enumerate(rows):
        top = out.top_logprobs[i]
        assert len(top) == r.params.top_logprobs_num
        values = [value for _, value in top]
        assert values == sorted(values, reverse=True)
        assert all(value == pytest.approx(reference[i, token_id].item(), abs=1e-6) for token_id, value in top)
    assert out.top_logprobs[0][0][0] == out.token_ids[0] == logits[0].argmax().item()
    assert out.top_logprobs[1][0][0] == out.token_ids[1]


# --- mixed batches ---------------------------------------------------------------------------------


def test_a_mixed_batch_gives_each_row_what_it_would_get_alone():
    vocab_size = 48
    rows = [
        row(temperature=0.0),
        row(temperature=0.9, top_k=10, seed=11),
        row(temperature=0.0, prompt=[1, 2, 2], output=[5, 5, 7], repetition_penalty=1.4, frequency_penalty=0.6),
        row(temperature=1.5, min_p=0.05, top_p=0.9, seed=12, return_logprob=True, top_logprobs_num=3),
        row(temperature=1.0),  # unseeded: only checked for being a valid token
        row(temperature=0.7, logit_bias={3: 4.0}, presence_penalty=1.0, output=[3], seed=13, min_new_tokens=5),
        row(temperature=0.0, output=[9], stop=(2, 9), min_new_tokens=2, return_logprob=True),
    ]
    rows[5].stop_token_ids = (0, 3)
    logits = random_logits(len(rows), vocab_size, seed=8)
    mask = torch.ones(len(rows), vocab_size, dtype=torch.bool)
    mask[1, :20] = False
    batch = Sampler(vocab_size, seed=0).sample(logits, rows, vocab_mask=mask)
    for i, r in enumerate(rows):
        alone = Sampler(vocab_size, seed=1).sample(logits[i : i + 1], [r], vocab_mask=mask[i : i + 1])
        if r.params.seed is None and not r.params.is_greedy:
            assert 0 <= batch.token_ids[i] < vocab_size
            continue
        assert batch.token_ids[i] == alone.token_ids[0], i
        assert (batch.logprobs[i] is None) == (alone.logprobs[0] is None), i
        assert batch.logprobs[i] is None or batch.logprobs[i] == pytest.approx(alone.logprobs[0], abs=1e-6), i
        assert (batch.top_logprobs[i] is None) == (alone.top_logprobs[0] is None), i
        for (batch_id, batch_value), (alone_id, alone_value) in zip(
            batch.top_logprobs[i] or [], alone.top_logprobs[0] or []
        ):
            assert batch_id == alone_id and batch_value == pytest.approx(alone_value, abs=1e-6), i
    assert batch.token_ids[1] >= 20
    assert batch.token_ids[5] not in (0, 3)


def test_in_flight_outputs_count_like_resolved_ones_for_seeds_and_min_new_tokens():
    """Overlap schedule: a row's last outputs may still be in flight (``num_output`` > ``len(output_ids)``).
    Seeds and min_new_tokens see the count, so the draw is the one the resolved history would give."""
    logits = random_logits(2, 40, seed=9)
    params = {"temperature": 1.0, "seed": 77, "min_new_tokens": 3}
    resolved = [row(output=[5, 6, 7], stop=[11], **params), row(output=[5, 6], stop=[11], **params)]
    in_flight = [
        SamplingRow(SamplingParams(**params), [], [5], (11,), num_output=3),
        SamplingRow(SamplingParams(**params), [], [], (11,), num_output=2),
    ]
    sampler = Sampler(40, seed=0)
    assert sampler.sample(logits, in_flight).token_ids == sampler.sample(logits, resolved).token_ids
    masked = process_logits(logits, in_flight)
    assert masked[1, 11] == float("-inf") and masked[0, 11] == logits[0, 11]


# --- logits in the model's 16-bit dtype (the runner's) ------------------------------------------


def test_bf16_logits_sample_as_their_float32_copy(monkeypatch):
    """The runner hands over logits in the model's dtype. Plain greedy rows take their argmax as
    they are (no float32 copy: bf16 -> float32 is exact, so the ids cannot differ); any row that
    rewrites or draws (bias, penalties, a grammar mask, temperature) gets the float32 copy first,
    so every row samples exactly as from float32 logits."""
    logits = random_logits(6, 40, seed=3).to(torch.bfloat16)
    logits[0, 7] = logits[0, 9] = logits[0].max() + 1  # a tie: the lowest id wins either way
    greedy = [row(temperature=0.0) for _ in range(6)]
    batches = [
        (greedy, None),
        ([row(temperature=0.0, min_new_tokens=2, stop=(5,)) for _ in range(6)], None),  # masks, no rewrite
        ([row(temperature=0.0), row(seed=1), row(temperature=0.0), row(top_p=0.5, seed=2)] + greedy[:2], None),
        ([row(temperature=0.0, logit_bias={3: 5.0})] + greedy[:5], None),
        ([row(temperature=0.0, output=[1, 2], repetition_penalty=1.3) for _ in range(6)], None),
        (greedy, torch.rand(6, 40, generator=torch.Generator().manual_seed(4)) > 0.5),
        ([row(temperature=0.0, return_logprob=True, top_logprobs_num=3) for _ in range(6)], None),
        ([row(seed=s) for s in range(6)], None),
    ]
    for rows, mask in batches:
        if mask is not None:
            mask[:, 0] = True  # every row allows a token
        want = Sampler(40, seed=0).sample(logits.float(), rows, mask)
        got = Sampler(40, seed=0).sample(logits, rows, mask)
        assert got.token_ids == want.token_ids
        assert got.logprobs == want.logprobs and got.top_logprobs == want.top_logprobs
    assert Sampler(40).sample(logits, greedy).token_ids == logits.float().argmax(dim=-1).tolist()
    assert Sampler(40).sample(logits, greedy).token_ids[0] == 7

    converted = []  # the plain greedy batch takes no float32 copy; a drawing one does
    original_float = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self: converted.append(self.dtype) or original_float(self))
    Sampler(40, seed=0).sample(logits, greedy)
    assert converted == []
    Sampler(40, seed=0).sample(logits, [row(temperature=0.7, seed=1)] * 6)
    assert converted == [torch.bfloat16]
