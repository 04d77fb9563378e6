"""Timing on a shared machine: interleaved rounds, per-round ratios, one summary type (:class:`Stats`).

Every cell of a benchmark runs its contenders once per round, in an order that rotates
from round to round, so a burst of load from another process lands on all of them
alike. A ratio is computed inside each round (same load, same moment) and summarised
over rounds as median, quartiles and min/max: never a ratio of two medians taken at
different times.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

NAN = math.nan


def no_sync() -> None:
    """CPU work is finished when the call returns: nothing to wait for."""


@dataclass(frozen=True)
class Stats:
    """Repeated samples (seconds, rates, ratios, latencies): the median with its spread (quartiles, extremes,
    count) and the tail and mean a latency needs (Triton's statistics are means)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    p95: float = NAN
    p99: float = NAN
    mean: float = NAN

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        assert len(samples) > 0, "Stats.of needs at least one sample"
        a = np.asarray(samples, dtype=np.float64)
        q1, med, q3, p95, p99 = (float(x) for x in np.percentile(a, [25, 50, 75, 95, 99]))
        return cls(med, q1, q3, float(a.min()), float(a.max()), int(a.size), p95, p99, float(a.mean()))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stats:
        """From ``to_dict``, or from the latency percentiles (p50, p95, p99, mean) of results older than this type."""
        if "median" not in d:
            d = {"median": d["p50"], "q1": NAN, "q3": NAN, "min": NAN, "max": NAN, "n": 0, **d}
        return cls(**{k: v for k, v in d.items() if k != "p50"})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def per_round_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Stats:
    """numerator[i] / denominator[i] for each round i, summarised."""
    assert len(numerator) == len(denominator), f"rounds differ: {len(numerator)} vs {len(denominator)}"
    return Stats.of([a / b for a, b in zip(numerator, denominator, strict=True)])


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` starting at position ``round_index`` (mod len): no contender always runs first."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def interleaved_rounds(
    contenders: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    sync: Callable[[], None] = no_sync,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round, rounds interleaved (see module doc)."""
    assert rounds >= 1 and warmup >= 0, f"rounds={rounds} must be >= 1 and warmup={warmup} >= 0"
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    sync()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotated(names, r):
            sync()
            t0 = time.perf_counter()
            contenders[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def rate(
    call: Callable[[], object], work: float, repeats: int, sync: Callable[[], None] = no_sync, min_seconds: float = 0.2
) -> Stats:
    """``work`` (FLOPs, items) per second of ``call``, one sample per repeat after a warm-up call. Each sample
    times enough back-to-back calls to last ``min_seconds``, so the clock's resolution and one-off stalls do not
    set the rate."""
    call()
    sync()
    t0 = time.perf_counter()
    call()
    sync()
    calls = max(1, round(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    rates = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        rates.append(calls * work / (time.perf_counter() - t0))
    return Stats.of(rates)


def in_threads(targets: Sequence[Callable[[], object]]) -> float:
    """Run each target in a thread of its own, all started together; wall seconds until the last one ends."""
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0
