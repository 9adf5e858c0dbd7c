"""Logit processing before sampling: logit bias, penalties and masks, vectorised over the batch.

``process_logits`` applies, in this order (each op is skipped when no row needs it):

1. ``logit_bias``: ``logit[t] += bias[t]``.
2. Repetition penalty (Hugging Face semantics) over the tokens present in prompt + output:
   a positive logit is divided by the penalty, a negative one multiplied by it.
3. Frequency / presence penalties (OpenAI semantics) over output tokens only:
   ``logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)``.
4. ``min_new_tokens``: a row's stop tokens are set to ``-inf`` while ``num_output < min_new_tokens``.
5. Grammar ``vocab_mask`` (``[B, V]`` bool of *allowed* tokens): disallowed tokens are set to ``-inf``.
   When a row's grammar allows only stop tokens that step 4 forbids, the grammar wins and step 4 is
   dropped for that row: a structurally valid end beats a longer output.

Penalties read ``output_ids``, which holds resolved tokens only: the engine resolves in-flight
tokens (overlap schedule) before it schedules a penalised request, so its history is exact here.

Counts come from one ``scatter_add`` over a padded ``[B, L]`` tensor of token ids, so repeated ids
count correctly. This recomputes counts from the full history every step; a stateful per-request
count tensor is the optimisation to reach for if long prompts with repetition penalty show up in a profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from radixserve.attention.upload import move, to_device

if TYPE_CHECKING:
    from radixserve.runner.sampler import SamplingRow


def process_logits(
    logits: torch.Tensor, rows: Sequence[SamplingRow], vocab_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the logits every row samples from: bias, penalties and masks applied (see the module docstring).

    ``logits``: ``[B, V]`` float32, one row per entry of ``rows``; never modified. The result is a new
    tensor, or ``logits`` itself when no op applies. Raises ``ValueError`` when a ``vocab_mask`` row
    allows no token at all.
    """
    out = logits
    if any(row.params.logit_bias for row in rows):
        out = _apply_logit_bias(out.clone(), rows)
    if any(_has_penalty(row) for row in rows):
        out = _apply_penalties(out, rows)
    blocked = _min_tokens_blocked(rows)
    if vocab_mask is not None:
        return _apply_vocab_mask(out, vocab_mask, blocked)
    if blocked[0]:
        out = out.clone() if out is logits else out
        out[_index_pair(*blocked, out.device)] = float("-inf")
    return out


def is_plain_greedy(row: SamplingRow) -> bool:
    """Whether ``row`` takes the argmax of its logits as they are: greedy, no bias, no penalty
    (``process_logits`` at most sets its stop tokens to ``-inf``, exact in any dtype)."""
    return row.params.is_greedy and not row.params.logit_bias and not _has_penalty(row)


def _has_penalty(row: SamplingRow) -> bool:
    p = row.params
    return p.repetition_penalty != 1.0 or bool(p.frequency_penalty) or bool(p.presence_penalty)


def _apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    row_index, token_ids, biases = [], [], []
    for i, row in enumerate(rows):
        for token_id, bias in row.params.logit_bias.items():
            row_index.append(i)
            token_ids.append(token_id)
            biases.append(bias)
    index = _index_pair(row_index, token_ids, logits.device)
    values = to_device(biases, logits.device, logits.dtype)  # [num_biases]
    return logits.index_put_(index, values, accumulate=True)


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Repetition, then frequency / presence; both read one count of the penalised rows' output tokens."""
    vocab_size, device = logits.shape[1], logits.device
    output_counts = token_counts([row.output_ids if _has_penalty(row) else [] for row in rows], vocab_size, device)
    if any(row.params.repetition_penalty != 1.0 for row in rows):
        logits = _apply_repetition_penalty(logits, rows, output_counts)
    if any(row.params.frequency_penalty or row.params.presence_penalty for row in rows):
        logits = _apply_frequency_presence(logits, rows, output_counts)
    return logits


def _apply_repetition_penalty(
    logits: torch.Tensor, rows: Sequence[SamplingRow], output_counts: torch.Tensor
) -> torch.Tensor:
    """Hugging Face: ``logit / p`` where positive, ``logit * p`` where negative, for tokens seen in prompt + output.

    Rows with penalty 1.0 may be marked present too: dividing or multiplying by 1.0 is exact.
    """
    prompts = [row.prompt_ids if row.params.repetition_penalty != 1.0 else [] for row in rows]
    prompt_counts = token_counts(prompts, logits.shape[1], logits.device)  # [B, V]
    present = (prompt_counts + output_counts) > 0  # [B, V]
    penalty = _row_values([row.params.repetition_penalty for row in rows], logits)  # [B, 1]
    penalised_logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised_logits, logits)


def _apply_frequency_presence(
    logits: torch.Tensor, rows: Sequence[SamplingRow], output_counts: torch.Tensor
) -> torch.Tensor:
    """OpenAI: ``logit -= frequency * count + presence * (count > 0)`` over output tokens only."""
    frequency = _row_values([row.params.frequency_penalty for row in rows], logits)  # [B, 1]
    presence = _row_values([row.params.presence_penalty for row in rows], logits)  # [B, 1]
    return logits - frequency * output_counts - presence * (output_counts > 0).to(logits.dtype)


def token_counts(id_lists: Sequence[Sequence[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """``[B, V]`` float32: how many times each token id occurs in each list (empty lists give zeros)."""
    max_len = max((len(ids) for ids in id_lists), default=0)
    counts = torch.zeros(len(id_lists), vocab_size, dtype=torch.float32, device=device)
    if max_len == 0:
        return counts
    # numpy fills the padded index ~7x faster than torch.tensor() on nested Python lists.
    padded = np.zeros((len(id_lists), max_len), dtype=np.int64)
    for i, ids in enumerate(id_lists):
        padded[i, : len(ids)] = ids
    index = move(torch.from_numpy(padded), device)  # [B, L]
    lengths = to_device([len(ids) for ids in id_lists], device)  # [B]
    valid = torch.arange(max_len, device=device)[None, :] < lengths[:, None]  # [B, L]; padding counts 0
    return counts.scatter_add_(1, index, valid.to(torch.float32))


def _min_tokens_blocked(rows: Sequence[SamplingRow]) -> tuple[list[int], list[int]]:
    """(row indices, token ids) of stop tokens forbidden because the row is below ``min_new_tokens``."""
    row_index, token_ids = [], []
    for i, row in enumerate(rows):
        if row.num_output < row.params.min_new_tokens:
            row_index.extend([i] * len(row.stop_token_ids))
            token_ids.extend(row.stop_token_ids)
    return row_index, token_ids


def _apply_vocab_mask(
    logits: torch.Tensor, vocab_mask: torch.Tensor, blocked: tuple[list[int], list[int]]
) -> torch.Tensor:
    if vocab_mask.shape != logits.shape or vocab_mask.dtype != torch.bool:
        raise ValueError(f"vocab_mask must be a bool tensor of shape {tuple(logits.shape)}")
    allowed = vocab_mask
    if blocked[0]:
        allowed = vocab_mask.clone()  # [B, V]
        allowed[_index_pair(*blocked, logits.device)] = False
        # The grammar wins over min_new_tokens where together they would allow nothing.
        allowed = torch.where(allowed.any(dim=1, keepdim=True), allowed, vocab_mask)
    if not bool(allowed.any(dim=1).all()):
        raise ValueError("vocab_mask allows no token for some row")
    return logits.masked_fill(~allowed, float("-inf"))


def _index_pair(row_index: list[int], token_ids: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    rows = to_device(row_index, device)  # [N]
    tokens = to_device(list(token_ids), device)  # [N]
    return rows, tokens


def _row_values(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` per-row parameter column in ``like``'s dtype and device, ready to broadcast over V."""
    return to_device(values, like.device, like.dtype)[:, None]
