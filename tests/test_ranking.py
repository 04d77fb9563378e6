"""The top-k ranking check every parity test leans on: overlap counted, near-ties excused, intruders named."""

from __future__ import annotations

import numpy as np
import pytest

from export.parity import TOLERANCES
from export.ranking import TOP_K, compare_topk, topk_intruders


def distinct_scores(seed: int, users: int = 2, candidates: int = 30, tasks: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).permutation(users * candidates * tasks).reshape(users, candidates, tasks) / 1e3


def test_without_ties_it_is_the_plain_overlap(seed: int) -> None:
    a = distinct_scores(seed)
    assert compare_topk(a, a.copy(), 0.0).overlap == 1.0
    assert compare_topk(a, -a, 0.0).overlap == 0.0  # the top 10 of 30 against the bottom 10
    b = a.copy()
    for user in range(2):
        for task in range(2):
            top = np.argsort(-a[user, :, task])[:TOP_K]
            b[user, top[:3], task] = -1.0  # three of each top 10 pushed to the bottom
    assert compare_topk(a, b, 0.0).overlap == pytest.approx(0.7)
    assert compare_topk(a[:, :4], -a[:, :4], 0.0).overlap == 1.0  # k is cut to N = 4: every item is in both top-4s


def test_a_swap_at_the_kth_place_is_a_tie_only_within_the_margin(seed: int) -> None:
    """The flake this module exists for: the 10th and 11th best 5e-8 apart, swapped by a reordered sum."""
    ref = distinct_scores(seed, users=1, tasks=1)
    order = np.argsort(-ref[0, :, 0])
    tenth, eleventh = order[TOP_K - 1], order[TOP_K]
    ref[0, eleventh, 0] = ref[0, tenth, 0] - 5e-8
    got = ref.copy()
    got[0, eleventh, 0] += 1e-7  # now ahead of the 10th
    tie = TOLERANCES["fp32"].rank_tie
    assert topk_intruders(ref, got, tie) == []
    assert compare_topk(ref, got, tie).overlap == 1.0
    (intruder,) = topk_intruders(ref, got, tie=0.0)  # held to exact ties it is an error
    assert (intruder.user, intruder.task, intruder.candidate) == (0, 0, eleventh)
    # a clearly worse candidate entering the top-k is an intruder at any margin below the gap
    got = ref.copy()
    worst = order[-1]
    got[0, worst, 0] = 1.0
    (intruder,) = topk_intruders(ref, got, tie)
    assert intruder.candidate == worst and intruder.kth - intruder.score > tie
    assert f"candidate {worst}" in intruder.describe(("play",))
    assert compare_topk(ref, got, tie).overlap == pytest.approx(0.9)


def test_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, T\]"):
        topk_intruders(np.zeros((1, 20, 2)), np.zeros((1, 19, 2)), 0.0)
