"""The best prefix-cache hit rate a workload allows: per request, the tokens it shares with what
was computed before it (earlier prompts, and earlier requests' outputs once they finished), as if
the cache were infinite. Like the engine, a hit is capped at ``len(prompt) - 1``.

The longest prefix a sequence shares with any member of a set is the longer of what it shares
with its two neighbours in lexicographic order, so a sorted list of tuples answers each query in
O(log n) comparisons without building a per-token trie.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix (binary search on slice equality: the work stays in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class PrefixIndex:
    """A set of token sequences; ``longest_prefix`` is the most of a query any of them starts with."""

    def __init__(self):
        self._keys: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self._keys)

    def insert(self, token_ids: Iterable[int]) -> None:
        key = tuple(token_ids)
        index = bisect.bisect_left(self._keys, key)
        if index == len(self._keys) or self._keys[index] != key:
            self._keys.insert(index, key)

    def longest_prefix(self, token_ids: Iterable[int]) -> int:
        key = tuple(token_ids)
        index = bisect.bisect_left(self._keys, key)
        neighbours = self._keys[max(index - 1, 0) : index + 1]
        return max((common_prefix_len(key, other) for other in neighbours), default=0)


def prefix_hits(prompts: Iterable[Sequence[int]]) -> list[int]:
    """Per prompt, in order, the tokens it shares with an earlier prompt (capped at len - 1)."""
    index = PrefixIndex()
    hits = []
    for prompt in prompts:
        hits.append(min(index.longest_prefix(prompt), len(prompt) - 1))
        index.insert(prompt)
    return hits


def max_hit_tokens(prompts: Iterable[Sequence[int]]) -> int:
    """Σ ``prefix_hits``. For prompts submitted together (an offline batch) it does not depend on the
    order: it is the prompt tokens minus the distinct prefixes, i.e. minus the nodes of the token trie.
    """
    return sum(prefix_hits(prompts))


def max_hit_tokens_timed(requests: Iterable[tuple[float, float, Sequence[int], Sequence[int]]]) -> int:
    """The same for requests that arrive over time: ``(send_time, finish_time, prompt, output)``.

    A prompt is reusable from its send time on (its prefill starts then); prompt + output from the
    finish time on (finished requests insert their output too). Sends and finishes are replayed in
    time order; at equal times finishes come first.
    """
    events = []
    for number, (send, finish, prompt, output) in enumerate(requests):
        events.append((send, 1, number, prompt, None))
        events.append((finish, 0, number, prompt, output))
    events.sort(key=lambda event: (event[0], event[1], event[2]))
    index = PrefixIndex()
    total = 0
    for _, is_send, _, prompt, output in events:
        if is_send:
            total += min(index.longest_prefix(prompt), len(prompt) - 1)
            index.insert(prompt)
        else:
            index.insert(list(prompt) + list(output))
    return total
