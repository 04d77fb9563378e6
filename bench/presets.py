"""What a run measures, by name: ``python -m bench --preset quick`` (or ``--quick``) or the ``default``.

Every field of the chosen preset is written into ``results.json``'s settings, so a report says what it measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import overload


@dataclass(frozen=True)
class Preset:
    block_lens: tuple[int, ...]  # history lengths Tb of (a) and (b)
    candidates: tuple[int, ...]  # candidate counts N of (a) and (b)
    rounds: int  # timed rounds per cell of (a), (b)
    warmup: int  # untimed rounds before each cell
    served_requests: int  # distinct requests per phase of (c)
    pa_interval_ms: int  # perf_analyzer's measurement window
    concurrency: tuple[int, ...]  # client concurrencies of (c)
    cache_dtypes: tuple[str, ...]  # keys/values cache dtypes served in (c); (b) always times both
    served_variants: bool  # (c) and (f) also on the repository variants (bench/variants.py)
    session_lane: int  # (f) requests per client lane of the session trace
    session_candidates: tuple[int, ...]  # (f) fresh candidates per session request
    session_rounds: int  # (f) rounds, a fresh trace each
    replica_counts: tuple[int, ...]  # (h) replicas
    replica_lanes: int  # (h) client lanes, one request in flight each
    replica_per_lane: int  # (h) requests per lane and run
    train_users: int  # (g) users (SUMI rows) per training step
    train_candidates: int  # (g) candidates per user (per-pair rows = users x this)
    overload: overload.Settings
    per_pair_full_max: int = 64  # (a) largest N at which per-pair is timed in full; above, on a subset, scaled
    per_pair_subset: int = 16  # (a) candidates per-pair is timed on above per_pair_full_max
    pa_max_trials: int = 6  # perf_analyzer windows per level before it gives up on stability
    session_k: int = 4  # (f) requests per session
    session_concurrency: int = 4  # (f) client lanes
    served_block_len: int = 48  # Tb of the served requests (B = 1: perf_analyzer's input data is batch 1)
    served_candidates: int = 256  # N of the served requests
    time_cap: float = 30.0  # seconds after which an in-process phase of (c) starts no new request
    matmul_size: int = 1024  # side of the square fp32 matrices of (d)'s limit
    seed: int = 0  # of every request


PRESETS = {
    "default": Preset(
        block_lens=(16, 48),
        candidates=(16, 64, 256, 1024),
        rounds=11,
        warmup=2,
        served_requests=256,
        pa_interval_ms=2000,
        concurrency=(1, 2, 4, 8, 16),
        cache_dtypes=("fp32", "fp16"),
        served_variants=True,
        session_lane=300,
        session_candidates=(64, 256),
        session_rounds=3,
        replica_counts=(1, 2, 3),
        replica_lanes=8,
        replica_per_lane=120,
        train_users=8,
        train_candidates=32,
        overload=overload.Settings(),
    ),
    "quick": Preset(  # a smoke run: every section, few shapes, rounds and requests (a few minutes)
        block_lens=(16,),
        candidates=(16, 64),
        rounds=2,
        warmup=1,
        served_requests=8,
        pa_interval_ms=500,
        concurrency=(1, 2),
        cache_dtypes=("fp32",),
        served_variants=False,
        session_lane=16,
        session_candidates=(64,),
        session_rounds=1,
        replica_counts=(1, 2),
        replica_lanes=4,
        replica_per_lane=4,
        train_users=2,
        train_candidates=8,
        overload=overload.Settings(multiples=(1, 4), seconds=1.0, capacity_seconds=1.0, warm_seconds=0.3, requests=8),
    ),
}
