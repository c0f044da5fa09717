"""LocalAgreement: what becomes stable, and that it never shrinks."""

import pytest

from streaming.stability import LocalAgreement, common_prefix_len


def test_common_prefix():
    assert common_prefix_len("abc", "abd") == 2
    assert common_prefix_len([], [1]) == 0


@pytest.mark.parametrize("hyps,expected", [
    ([["a", "b"]], ([], ["a", "b"])),                          # one hypothesis: nothing agreed yet
    ([["a", "b"], ["a", "b", "c"]], (["a", "b"], ["c"])),      # agreement on a b
    ([["a", "x"], ["a", "b", "c"]], (["a"], ["b", "c"])),
    ([["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]], (["a", "b", "c"], ["d"])),
    ([["x"], ["y"], ["y", "z"]], (["y"], ["z"])),
])
def test_local_agreement(hyps, expected):
    la = LocalAgreement()
    for h in hyps:
        result = la.insert(h)
    assert result == expected


def test_stable_prefix_is_kept_even_if_decoder_strays():
    la = LocalAgreement()
    la.insert(["the", "cat"])
    la.insert(["the", "cat", "sat"])
    stable, tail = la.insert(["a", "dog"])          # disagrees with the stable prefix
    assert stable == ["the", "cat"]
    assert tail == ["a", "dog"]  # the strayed words follow the kept prefix
    assert la.insert(["the", "cat", "sat", "down"])[0][:2] == ["the", "cat"]


def test_stable_never_shrinks_random():
    import random

    rng = random.Random(0)
    la = LocalAgreement()
    previous = []
    words = "one two three four five six seven eight".split()
    for step in range(40):
        n = min(len(words), step // 3 + 1)
        hyp = words[:n] + ([rng.choice(words)] if rng.random() < 0.5 else [])
        stable, _ = la.insert(hyp)
        assert stable[: len(previous)] == previous
        previous = stable


def test_n3_needs_three():
    la = LocalAgreement(n=3)
    la.insert(["a"])
    assert la.insert(["a"])[0] == []
    assert la.insert(["a"])[0] == ["a"]
