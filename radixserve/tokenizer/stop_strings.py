"""Stop strings over streamed text, with the holdback that keeps a half-seen stop string unsent.

Text is fed as it becomes final. Whatever could still be the start of a stop string stays held back
until the next delta settles it, so a client never receives ``"</"`` of a ``"</answer>"`` stop::

    emitted (final) | held (a proper prefix of some stop string) | <- next delta

Every stop occurrence not yet found starts inside ``held + delta`` (an earlier start would have been
held), so each feed searches only that: O(len(delta) + longest stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopCheck:
    """What one ``feed`` decided: ``emit`` is safe to send now; ``matched`` is the stop string that ended the text."""

    emit: str
    matched: str | None = None


class StopStringMatcher:
    """Find the first stop string in a growing text.

    "First" is the occurrence that completes earliest (ties: the one starting earliest), so the result
    does not depend on how the text was split into deltas. On a match, the emitted text ends right
    before the stop string, or right after it with ``no_stop_trim``; text after it is dropped.
    """

    def __init__(self, stop: Sequence[str], no_stop_trim: bool = False):
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError("stop strings must be non-empty strings")
        self.stop = tuple(dict.fromkeys(stop))
        self.no_stop_trim = no_stop_trim
        self.matched: str | None = None
        self._held = ""

    def feed(self, delta: str) -> StopCheck:
        """Add newly final text; return what may be sent now and the stop string if one completed."""
        if self.matched is not None:
            return StopCheck("", self.matched)
        text = self._held + delta
        match = self._first_match(text)
        if match is not None:
            start, stop = match
            self.matched = stop
            self._held = ""
            return StopCheck(text[: start + len(stop)] if self.no_stop_trim else text[:start], stop)
        held_len = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - held_len :]
        return StopCheck(text[: len(text) - held_len])

    def flush(self) -> str:
        """Generation ended for another reason: release the held-back text (nothing after a match)."""
        held, self._held = self._held, ""
        return held

    @property
    def held(self) -> str:
        """Text received but not yet emitted because a stop string might be starting in it."""
        return self._held

    def _first_match(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self.stop:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
