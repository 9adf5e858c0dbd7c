"""Which decode sequences of a step start with the same KV slots, and for how many tokens.

Requests that hit the same radix-tree path hold the *same slot ids* for it, so their contexts
start with literally the same K/V rows. Attention can then read that prefix once per group
instead of once per request (see ``triton_cascade.py``). This module finds the groups; it is pure
Python and knows nothing about tensors.

Cost per step is O(batch) once requests are known. What is cached, per request key:

    (slots_version, reference, common_len)

``reference`` is a private snapshot (never mutated) of the first slot list seen with that first slot, and
``common_len`` the length of the longest common prefix of the request's slots with it (computed
once, by C-speed slice comparisons, when the request first appears or its version changes).
Two requests that agree with the same reference on ``a`` and ``b`` tokens agree with each other
on ``min(a, b)`` -- slot ids are compared, so equal ids mean the same pool rows whatever they
hold. Decode steps only append to a request's slots (anything else bumps its version), so the
cached prefix stays valid. All cached entries with the same first slot share one reference: a
reference is dropped only when no request of the step uses it.

A group's shared length is the minimum over its members, each capped at ``seq_len - 1`` so that
every member keeps at least its newest key as its own. Within one reference the members with the
shortest agreement may be left out when that saves more reads (the best cut of the members sorted
by agreement).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_SHARED_PREFIX = 256  # tokens; a shorter common prefix is left to plain decode
# A cascade step costs extra launches and, above all, gives up CUDA-graph replay: it must save at
# least this many bytes of K/V reads per layer (~15 us at 4 TB/s; a guess to tune with bench/).
MIN_SAVED_BYTES = 64 << 20


@dataclass(frozen=True)
class PrefixGroup:
    members: list[int]  # batch indices of the sequences, >= 2
    shared_len: int  # every member's first shared_len slots are the same; < each member's seq_len


@dataclass(frozen=True)
class PrefixGroups:
    groups: list[PrefixGroup]
    shared_lens: list[int]  # [batch] the shared length of each sequence's group, 0 outside any group

    @property
    def num_saved_tokens(self) -> int:
        """Tokens of K/V (per layer) that grouped reads avoid: sum of (members - 1) * shared_len."""
        return sum((len(g.members) - 1) * g.shared_len for g in self.groups)


@dataclass(slots=True)
class _Entry:
    version: int | None
    first_slot: int  # -1 for an empty context
    reference: list[int]  # never mutated
    common_len: int  # slots[:common_len] == reference[:common_len]


@dataclass
class PrefixGrouper:
    """Finds shared-prefix groups among a step's decode sequences; remembers requests across steps."""

    min_shared_prefix: int = MIN_SHARED_PREFIX
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _references: dict[int, list[int]] = field(default_factory=dict)  # first slot -> snapshot

    def group(
        self,
        slots: Sequence[list[int]],  # [batch] each sequence's context slots (lists), slots[i][:seq_lens[i]]
        keys: Sequence[str],  # [batch] stable per request (the request id), distinct within a step
        seq_lens: Sequence[int],  # [batch]
        versions: Sequence[int] | None = None,  # [batch] changes whenever slots change other than by appending
    ) -> PrefixGroups:
        """Groups of >= 2 sequences sharing >= ``min_shared_prefix`` leading slots (see module doc).

        ``slots[i]`` is only read, never kept. Without ``versions`` a request's cached prefix is
        trusted for as long as it stays in consecutive steps. Requests absent from the call are
        forgotten, and so are references no present request uses.
        """
        old_entries, old_references = self._entries, self._references
        entries, references = self._entries, self._references = {}, {}
        by_first_slot: dict[int, list[tuple[int, int]]] = {}  # first slot -> [(usable_len, index)]
        min_len = self.min_shared_prefix
        rows = zip(keys, slots, seq_lens, versions if versions is not None else itertools.repeat(None))
        for index, (key, seq_slots, seq_len, version) in enumerate(rows):
            entry = old_entries.get(key)
            if entry is None or entry.version != version:
                entry = self._new_entry(seq_slots, seq_len, version, old_references)
            entries[key] = entry
            references[entry.first_slot] = entry.reference
            usable = min(entry.common_len, seq_len - 1)
            if usable >= min_len:
                by_first_slot.setdefault(entry.first_slot, []).append((usable, index))
        shared_lens = [0] * len(entries)
        groups = []
        for candidates in by_first_slot.values():
            group = self._best_cut(candidates)
            if group is not None:
                groups.append(group)
                for index in group.members:
                    shared_lens[index] = group.shared_len
        return PrefixGroups(groups, shared_lens)

    def _new_entry(self, slots: list[int], seq_len: int, version, old_references) -> _Entry:
        """Compare with the reference of the first slot (this step's, else the last step's: the
        same object when a request of the last step used it), or become that reference."""
        if seq_len == 0:
            return _Entry(version, -1, [], 0)
        first = slots[0]
        reference = self._references.get(first) or old_references.get(first)
        if reference is None:
            return _Entry(version, first, slots[:seq_len], seq_len)
        return _Entry(version, first, reference, common_prefix_len(slots, reference, seq_len))

    def _best_cut(self, candidates: list[tuple[int, int]]) -> PrefixGroup | None:
        """The members (longest agreement first) and length that save the most reads, if any."""
        if len(candidates) < 2:
            return None
        candidates.sort(reverse=True)
        best_saved, best_count = 0, 0
        for count, (usable, _) in enumerate(candidates[1:], start=2):
            saved = (count - 1) * usable
            if saved > best_saved:
                best_saved, best_count = saved, count
        if best_count < 2:
            return None
        members = sorted(index for _, index in candidates[:best_count])
        return PrefixGroup(members, candidates[best_count - 1][0])


def common_prefix_len(slots: list[int], reference: list[int], limit: int) -> int:
    """Length of the longest common prefix of ``slots[:limit]`` and ``reference`` (both lists).

    Bisection over slice equality: each round compares only the undecided half, so O(n) element
    compares in all, at C speed.
    """
    hi = min(limit, len(slots), len(reference))
    if slots[:hi] == reference[:hi]:
        return hi
    lo = 0  # slots[:lo] == reference[:lo]; slots[:hi] != reference[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if slots[lo:mid] == reference[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
