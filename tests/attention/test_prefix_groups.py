"""PrefixGrouper: which decode sequences share leading slots, for how long, and what it remembers."""

from __future__ import annotations

import random

import pytest

from radixserve.attention import prefix_groups
from radixserve.attention.prefix_groups import PrefixGroup, PrefixGrouper, common_prefix_len

MIN = 4  # min_shared_prefix of these tests


def step(grouper: PrefixGrouper, requests: dict[str, list[int]], versions: dict[str, int] | None = None):
    keys = list(requests)
    slots = [requests[key] for key in keys]
    found = grouper.group(slots, keys, [len(s) for s in slots], [versions[k] for k in keys] if versions else None)
    return {tuple(keys[i] for i in g.members): g.shared_len for g in found.groups}, found


def test_two_groups_and_a_loner():
    system, other = list(range(100, 110)), list(range(200, 208))
    requests = {
        "a": system + [1, 2],
        "x": other + [3],
        "b": system + [4],
        "loner": [300, 301, 302, 303, 304, 305],
        "y": other + [5, 6],
        "c": system[:7] + [7, 8, 9, 10],  # shares only 7 of the system prompt's 10
    }
    groups, found = step(PrefixGrouper(MIN), requests)
    # the cut that saves most: a, b share 10 (saves 10), all three 7 (saves 14)
    assert groups == {("a", "b", "c"): 7, ("x", "y"): 8}
    assert found.shared_lens == [7, 8, 7, 0, 8, 7]
    assert found.num_saved_tokens == 2 * 7 + 8


def test_a_straggler_that_costs_more_than_it_saves_is_left_out():
    system = list(range(100, 120))
    requests = {"a": system + [1], "b": system + [2], "c": system + [3], "straggler": system[:5] + [4, 5]}
    groups, found = step(PrefixGrouper(MIN), requests)
    assert groups == {("a", "b", "c"): 20}
    assert found.shared_lens == [20, 20, 20, 0]


def test_shared_len_is_capped_so_each_keeps_its_newest_key():
    prompt = list(range(100, 110))
    # "a" is exactly "b"'s first 10 slots (possible when a freed slot is reused at the same position)
    groups, _ = step(PrefixGrouper(MIN), {"a": prompt, "b": prompt + [1, 2]})
    assert groups == {("a", "b"): 9}
    groups, _ = step(PrefixGrouper(MIN), {"a": prompt[:MIN], "b": prompt + [1]})
    assert groups == {}  # the cap leaves a only MIN - 1


def test_short_prefixes_and_single_members_form_no_group():
    groups, found = step(PrefixGrouper(MIN), {"a": [1, 2, 3, 9], "b": [1, 2, 3, 8], "c": [5, 6, 7, 8, 9]})
    assert groups == {} and found.shared_lens == [0, 0, 0] and found.num_saved_tokens == 0


def test_prefixes_are_compared_once_per_request_and_version(monkeypatch):
    calls = []
    real = prefix_groups.common_prefix_len
    monkeypatch.setattr(prefix_groups, "common_prefix_len", lambda *args: calls.append(1) or real(*args))
    system = list(range(100, 110))
    requests = {"a": system + [1], "b": system + [2], "c": system + [3]}
    versions = {"a": 0, "b": 0, "c": 0}
    grouper = PrefixGrouper(MIN)
    step(grouper, requests, versions)
    assert len(calls) == 2  # "a" became the reference; b and c were compared with it
    for token in range(10, 15):  # decode steps append: nothing is compared again
        for slots in requests.values():
            slots.append(token * 10 + len(slots))
        groups, _ = step(grouper, requests, versions)
        assert groups == {("a", "b", "c"): 10}
    assert len(calls) == 2
    requests["b"] = system[:6] + [50, 51, 52]  # b's slots were swapped: a new version
    versions["b"] = 1
    groups, _ = step(grouper, requests, versions)
    assert len(calls) == 3 and groups == {("a", "b", "c"): 6}


def test_absent_requests_and_unused_references_are_forgotten():
    grouper = PrefixGrouper(MIN)
    system = list(range(100, 110))
    step(grouper, {"a": system + [1], "b": system + [2]})
    step(grouper, {"b": system + [2, 3], "z": [7, 8, 9, 10, 11]})
    assert set(grouper._entries) == {"b", "z"}
    step(grouper, {"z": [7, 8, 9, 10, 11, 12]})
    assert set(grouper._references) == {7}
    # slot 100 was freed and now starts a different prefix: a fresh reference, a correct group
    reused = [100, 1, 2, 3, 4, 5, 6]
    groups, _ = step(grouper, {"z": [7, 8, 9, 10, 11, 12], "p": reused + [40], "q": reused + [41]})
    assert groups == {("p", "q"): 7}
    assert grouper._references[100] == reused + [40]


def test_common_prefix_len_matches_a_naive_scan():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randrange(0, 40)
        a = [rng.randrange(3) for _ in range(n)]
        b = a[: rng.randrange(0, n + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 10))]
        limit = rng.randrange(0, 50)
        naive = 0
        while naive < min(limit, len(a), len(b)) and a[naive] == b[naive]:
            naive += 1
        assert common_prefix_len(a, b, limit) == naive


@pytest.mark.parametrize("seed", range(20))
def test_random_batches_group_only_truly_shared_prefixes(seed):
    """Requests over a few random radix paths, arriving and leaving over steps: every group's
    members agree on their first ``shared_len`` slots, which leaves each one key of its own."""
    rng = random.Random(seed)
    trunks = [[1000 * t + i for i in range(rng.randrange(2, 30))] for t in range(1, 4)]
    grouper, live, next_slot, next_id = PrefixGrouper(MIN), {}, 10**6, 0
    for _ in range(30):
        for _ in range(rng.randrange(0, 4)):
            trunk = rng.choice(trunks)
            live[f"r{next_id}"], next_id = trunk[: rng.randrange(1, len(trunk) + 1)], next_id + 1
        for key in rng.sample(sorted(live), k=min(len(live), rng.randrange(0, 2))):
            del live[key]
        for key in live:
            live[key] = live[key] + [next_slot]
            next_slot += 1
        if not live:
            continue
        _, found = step(grouper, live)
        keys = list(live)
        for group in found.groups:
            check_group(group, [live[keys[i]] for i in group.members])


def check_group(group: PrefixGroup, slots: list[list[int]]) -> None:
    assert len(group.members) >= 2 and group.shared_len >= MIN
    assert all(group.shared_len <= len(s) - 1 for s in slots)
    assert all(s[: group.shared_len] == slots[0][: group.shared_len] for s in slots)
