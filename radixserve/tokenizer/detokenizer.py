"""Streaming detokenization: turn each step's new token ids into the text that is now final.

Decoding token by token is wrong twice over: a byte-level BPE token can end inside a UTF-8 character
(its text ends in U+FFFD until the next token completes it), and SentencePiece-style decoders drop
the leading space of the first token they see. So each step decodes a small window instead:

    ids:  ... | prefix (already emitted) | pending (not yet emitted) |
                ^ window start            ^ read_offset              ^ end

The delta is ``decode(window)`` minus ``decode(prefix)``; it is emitted only when it is non-empty and
does not end in U+FFFD. The emitted tokens then join the prefix, whose text is the window's text
just decoded: no second decode. Once the prefix would pass ``PREFIX_TOKENS``, the window slides
instead (the emitted tokens alone become the prefix, decoded once more). The window holds a few
tokens, so each step costs O(window), never O(output), and about 1.2 tokenizer calls instead of 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from radixserve.tokenizer.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded as context for the first output token (its leading space).
PROMPT_TAIL_LEN = 5
# Valid UTF-8 never keeps more than 3 tokens pending (a character has at most 4 bytes). Beyond this,
# the model is emitting invalid bytes: emit their U+FFFD rather than grow the window forever.
MAX_PENDING_TOKENS = 8
# Emitted tokens kept as the prefix before the window slides (sliding costs one more decode).
PREFIX_TOKENS = 5
# A UTF-8 sequence cut at a token boundary is settled once 3 more bytes (>= 3 tokens) follow it.
_SETTLE_TOKENS = 3


class IncrementalDetokenizer:
    """Per-request streaming decoder. Contract, for the same flags::

        "".join(step(ids) for ids in chunks) + flush() == tokenizer.decode(all_ids, ...)

    up to the prompt boundary (a leading space of the first output token is kept when the prompt
    gives it context). Deltas never contain U+FFFD unless the token ids really decode to invalid
    UTF-8. ``skip_special_tokens`` / ``spaces_between_special_tokens`` mean what they mean in
    ``Tokenizer.decode``; the defaults are ``SamplingParams``'.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ):
        self._tokenizer = tokenizer
        self._special_ids = tokenizer.special_ids
        self._skip_special = skip_special_tokens
        # Kept special tokens either go through the window (fast-tokenizer decoding) or are emitted
        # directly as separate, space-joined pieces.
        self._split_on_special = not skip_special_tokens and spaces_between_special_tokens
        self._num_pieces = 0  # pieces (text runs, special tokens) of the output so far, for separators
        self._in_run = False
        self._init_window(prompt_ids)

    def _init_window(self, prompt_ids: Sequence[int]) -> None:
        tail = list(prompt_ids[-PROMPT_TAIL_LEN:])
        # Special tokens give no spacing context (and are no text when skipped): start after the last.
        last_special = max((i for i, token_id in enumerate(tail) if token_id in self._special_ids), default=-1)
        self._ids = tail[last_special + 1 :]  # the window; it always starts at the prefix
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        if self._prefix_text.endswith(REPLACEMENT_CHAR):  # the prompt ends inside a character
            self._reset_window()

    def step(self, new_token_ids: Sequence[int]) -> str:
        """Feed the newly generated ids; return the text they make final (often "", held back)."""
        if self._skip_special:
            return self._extend([i for i in new_token_ids if i not in self._special_ids])
        if not self._split_on_special:
            return self._extend(list(new_token_ids))
        return self._step_split(new_token_ids)

    def flush(self) -> str:
        """At the end of the stream: everything still held back (an incomplete character shows as U+FFFD)."""
        if self._read_offset == len(self._ids):
            return ""
        return self._advance(len(self._ids), self._decode(self._ids))

    @property
    def window_len(self) -> int:
        """Tokens currently decoded per step (prefix + pending): stays small whatever the output length."""
        return len(self._ids)

    def _step_split(self, new_token_ids: Sequence[int]) -> str:
        parts, run = [], []
        for token_id in new_token_ids:
            if token_id not in self._special_ids:
                if not self._in_run:
                    self._in_run = True
                    parts.append(self._start_piece())
                run.append(token_id)
                continue
            parts.append(self._extend(run))
            parts.append(self._end_run())
            parts.append(self._start_piece() + self._tokenizer.special_token_text(token_id))
            run = []
        parts.append(self._extend(run))
        return "".join(parts)

    def _start_piece(self) -> str:
        separator = " " if self._num_pieces else ""
        self._num_pieces += 1
        return separator

    def _end_run(self) -> str:
        text = self.flush()
        self._reset_window()
        self._in_run = False
        return text

    def _extend(self, new_ids: list[int]) -> str:
        if not new_ids:
            return ""
        self._ids.extend(new_ids)
        text = self._decode(self._ids)
        if len(text) > len(self._prefix_text) and not text.endswith(REPLACEMENT_CHAR):
            return self._advance(len(self._ids), text)
        if len(self._ids) - self._read_offset > MAX_PENDING_TOKENS:
            return self._advance_past_invalid(text)
        return ""

    def _advance_past_invalid(self, text: str) -> str:
        """Emit up to the latest boundary whose text can no longer change (``text`` = decode(window))."""
        for cut in range(len(self._ids) - _SETTLE_TOKENS, self._read_offset, -1):
            head = self._decode(self._ids[:cut])
            if text.startswith(head) and len(head) >= len(self._prefix_text):
                return self._advance(cut, head)
        cut = len(self._ids) - _SETTLE_TOKENS  # no clean boundary at all: give up exactness, not memory
        return self._advance(cut, self._decode(self._ids[:cut]))

    def _advance(self, cut: int, head_text: str) -> str:
        """Emit the text of window[:cut] (``head_text``) past the prefix; window[:cut] becomes the
        prefix while short enough, else window[read_offset:cut] does."""
        delta = head_text[len(self._prefix_text) :]
        if cut <= PREFIX_TOKENS:
            self._read_offset, self._prefix_text = cut, head_text
            return delta
        del self._ids[: self._read_offset]
        self._read_offset = cut - self._read_offset
        self._prefix_text = self._decode(self._ids[: self._read_offset])
        return delta

    def _reset_window(self) -> None:
        self._ids = []
        self._read_offset = 0
        self._prefix_text = ""

    def _decode(self, ids: list[int]) -> str:
        # Windows never hold special tokens when they are skipped or split off, so this is plain decoding.
        return self._tokenizer.decode(ids, skip_special_tokens=False)
