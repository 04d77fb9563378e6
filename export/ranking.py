"""Top-k ranking agreement between a reference and a candidate runtime, with ties named.

Two runtimes that agree to a few ulps can still order two candidates differently when their reference
scores are equal or nearly so; on an untrained model about one user in ten has a gap under 1e-6 at the
k-th place. Counting such a swap as a ranking error makes a check flaky without catching anything, so a
candidate counts against the candidate runtime only when it enters the top-k although its reference
score is below the reference's k-th best by more than ``tie``. With ``tie=0`` and distinct scores this is
the plain overlap |top-k(ref) ∩ top-k(got)| / k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TOP_K = 10


@dataclass(frozen=True)
class Intruder:
    """A candidate in the candidate runtime's top-k whose reference score is clearly below the k-th best."""

    user: int
    task: int
    candidate: int
    score: float  # its reference score
    kth: float  # the reference's k-th best score for this user and task

    def describe(self, tasks: tuple[str, ...] | None = None) -> str:
        task = tasks[self.task] if tasks else str(self.task)
        return (
            f"user {self.user}, task {task}: candidate {self.candidate} entered the top-k with reference score "
            f"{self.score:.6f}, {self.kth - self.score:.2e} below the k-th best {self.kth:.6f}"
        )


def topk_intruders(ref: npt.ArrayLike, got: npt.ArrayLike, tie: float, k: int = TOP_K) -> list[Intruder]:
    """Every intruder in ``got``'s top-k, per user and task; ``ref``, ``got``: scores [B, N, T]."""
    r, g = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if r.shape != g.shape or r.ndim != 3:
        raise ValueError(f"scores must be two arrays [B, N, T] of one shape, got {r.shape} and {g.shape}")
    k = min(k, r.shape[1])
    found = []
    for user in range(r.shape[0]):
        for task in range(r.shape[2]):
            kth = float(np.sort(r[user, :, task])[-k])
            picked = np.argsort(-g[user, :, task], kind="stable")[:k]
            for c in picked[r[user, picked, task] < kth - tie]:
                found.append(Intruder(user, task, int(c), float(r[user, c, task]), kth))
    return found


@dataclass(frozen=True)
class TopK:
    """One comparison's intruders, and the share of top-k slots free of them (mean over users and tasks)."""

    intruders: list[Intruder]
    overlap: float  # 1.0 for N = 0


def compare_topk(ref: npt.ArrayLike, got: npt.ArrayLike, tie: float, k: int = TOP_K) -> TopK:
    """:func:`topk_intruders` with the overlap they leave, from one pass; ``ref``, ``got``: scores [B, N, T]."""
    intruders = topk_intruders(ref, got, tie, k)
    b, n, t = np.shape(ref)
    slots = min(k, n) * b * t
    return TopK(intruders, 1.0 - len(intruders) / slots if slots else 1.0)
