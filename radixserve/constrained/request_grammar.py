"""One request's position in its grammar: a thin owner of one xgrammar ``GrammarMatcher``.

Life of a constrained request (the engine drives it, one call per step)::

    fill_mask(bitmask, row)  ->  sampler masks logits, samples t  ->  accept(t)
    ...                                   until is_terminated(): finish with reason "stop"

When the grammar is complete the mask allows the stop tokens (plus any continuation the grammar
still permits); a grammar that cannot continue allows only the stop tokens. Accepting a stop token
terminates the matcher. Stop tokens never reach the grammar's text.
"""

from __future__ import annotations

import torch
import xgrammar as xgr

from radixserve.constrained.grammar_spec import GrammarError


class RequestGrammar:
    """The matcher state of one request. Not thread-safe: one owner (the engine loop) at a time."""

    def __init__(self, matcher: xgr.GrammarMatcher):
        self._matcher = matcher
        self._stop_token_ids = tuple(matcher.stop_token_ids)
        self._num_accepted = 0

    @property
    def num_accepted(self) -> int:
        """Tokens accepted since creation or the last ``replay``, the stop token included."""
        return self._num_accepted

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The tokens that end the grammar. Accepting one (only allowed once the grammar is complete)
        terminates the matcher."""
        return self._stop_token_ids

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token. False (state unchanged) when the grammar forbids it, the
        matcher has terminated, or the id is special or out of range."""
        accepted = self._matcher.accept_token(int(token_id))
        if accepted:
            self._num_accepted += 1
        return accepted

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write the allowed next tokens into ``bitmask[row]`` (CPU int32, see ``bitmask.py``).

        Returns False when the row allows every token (masking can be skipped). After termination
        the row allows only the stop tokens, so a late call never leaves a row with nothing allowed.
        """
        if self._matcher.is_terminated():
            self._fill_stop_only(bitmask[row])
            return True
        return self._matcher.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        """A stop token was accepted: the request is done (finish reason "stop")."""
        return self._matcher.is_terminated()

    def is_completed(self) -> bool:
        """The text so far is a full match of the grammar (a stop token is now allowed)."""
        return self._matcher.is_completed()

    def replay(self, token_ids: list[int]) -> None:
        """Reset to the start and accept ``token_ids`` in order (to rebuild state exactly).

        Raises ``GrammarError`` at the first token the grammar rejects; the matcher then holds the
        accepted prefix and ``num_accepted`` says how long it is.
        """
        self._matcher.reset()
        self._num_accepted = 0
        for position, token_id in enumerate(token_ids):
            if not self.accept(token_id):
                raise GrammarError(f"token {token_id} at position {position} does not follow the grammar")

    def _fill_stop_only(self, words: torch.Tensor) -> None:
        words.zero_()  # [W] int32
        for token_id in self._stop_token_ids:
            word, bit = divmod(token_id, 32)
            # The sign bit as int32: 1 << 31 does not fit.
            words[word] |= (1 << bit) - (1 << 32 if bit == 31 else 0)
