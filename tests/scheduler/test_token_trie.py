"""TokenTrie against a naive reference: a node's path spells its sequence, and two sequences meet at
the node that ends their longest common prefix, whatever the insertion order and split points."""

from __future__ import annotations

import random

import pytest

from radixserve.scheduler.token_trie import TokenTrie, TrieNode


def _path(node: TrieNode) -> list[int]:
    keys = []
    while node.parent is not None:
        keys.append(node.key)
        node = node.parent
    return [token for key in reversed(keys) for token in key]


def _ancestors(node: TrieNode) -> list[TrieNode]:
    chain = [node]
    while chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    return chain


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_a_split_keeps_the_node_of_a_longer_sequence():
    trie = TokenTrie()
    long = trie.insert([1, 2, 3, 4, 5])
    short = trie.insert([1, 2, 3])
    other = trie.insert([1, 2, 9])
    assert (short.key, long.key, other.key) == ([3], [4, 5], [9])
    assert long.parent is short and short.parent is other.parent
    assert _path(other.parent) == [1, 2] and trie.insert([]) is trie.root


def _cut(rng: random.Random, base: list[int]) -> list[int]:
    return base[: rng.randrange(len(base) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(6))]


@pytest.mark.parametrize("seed", range(20))
def test_random_sequences_meet_at_their_longest_common_prefix(seed):
    rng = random.Random(seed)
    bases = [[rng.randrange(3) for _ in range(rng.randrange(0, 40))] for _ in range(4)]
    # cut a base anywhere and append a few tokens: shared prefixes, prefixes of each other, duplicates
    sequences = [_cut(rng, rng.choice(bases)) for _ in range(30)]
    trie = TokenTrie()
    nodes = [trie.insert(sequence) for sequence in sequences]
    for sequence, node in zip(sequences, nodes, strict=True):
        assert _path(node) == sequence
    for a, node_a in zip(sequences, nodes, strict=True):
        for b, node_b in zip(sequences, nodes, strict=True):
            above_b = {id(n) for n in _ancestors(node_b)}
            meet = next(n for n in _ancestors(node_a) if id(n) in above_b)
            assert len(_path(meet)) == _common_prefix_len(a, b)
