"""(f) Session traffic against the response cache: the same trace, Triton with the cache off and on.

The traffic model: a population of ``users``, each with a flat event history; sessions arrive for
users drawn by Zipf popularity (rank r with probability ∝ 1 / r^s). Between two sessions of a user
the history grows by one event with probability ``p_new_event`` (what the last session led to);
a session has one scenario and ``k`` requests, each with ``N`` fresh candidates and a later request
time, and an unchanged history: the encoder's inputs (history blocks + scenario) repeat
byte for byte within a session, so with the cache on every request after a session's first can
be a hit, and a returning user whose history and scenario did not change hits from the start.

The trace is cut into ``concurrency`` lanes, each a client sending whole sessions in order (one
request after the other, as one user's pages come), and interleaved so that perf_analyzer's
thread ``t`` sends lane ``t`` (:func:`bench.perf_analyzer.lanes_to_steps`). perf_analyzer sends the
whole trace once (``--request-count``) and measures over it.
The hit rate comes from Triton's statistics (``user_encoder``'s cache hits / (hits + misses));
the trace's own "ideal" rate (an unbounded cache, requests in trace order) is given beside it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bench.perf_analyzer import PaSettings, PerfAnalyzer, lanes_to_steps, run_level, write_input_data
from bench.served import add_delta, cache_counts, server_counters
from contract.blocks import EventHistory
from contract.config import AstroConfig
from contract.tensors import ENSEMBLE, GRAPH_IO, ITEM_SCORER, USER_ENCODER
from model.random_inputs import NOW, RandomRequest
from serve.response_cache import cache_sizing
from serve.triton_server import TritonServer

CACHE_SIDES = ("off", "on")


@dataclass(frozen=True)
class SessionModel:
    users: int = 2000
    zipf_s: float = 1.1  # popularity exponent
    k: int = 4  # requests per session
    p_new_event: float = 0.5  # chance a user's history grew since their last session
    candidates: int = 64  # fresh candidates per request
    min_events: int = 20
    max_events: int = 400  # flat history length of a user, uniform in [min_events, max_events]


@dataclass(frozen=True)
class Trace:
    lanes: list[list[RandomRequest]]
    ideal_hit_rate: float  # unbounded cache, requests in trace order
    sessions: int
    distinct_users: int

    @property
    def requests(self) -> int:
        return sum(len(lane) for lane in self.lanes)


def _history(cfg: AstroConfig, rng: np.random.Generator, n: int) -> EventHistory:
    ages = np.sort(rng.integers(60, 10**8, size=n))[::-1]
    return EventHistory(
        rng.integers(1, 10**9, size=n).astype(np.int64),
        rng.integers(0, cfg.n_behaviors, size=n).astype(np.int64),
        rng.integers(0, cfg.n_scenarios, size=n).astype(np.int64),
        (NOW - ages).astype(np.int64),
    )


def _grow(cfg: AstroConfig, rng: np.random.Generator, h: EventHistory, now: int) -> EventHistory:
    def add(a: np.ndarray[Any, Any], v: int) -> np.ndarray[Any, Any]:
        return np.append(a, np.int64(v))

    return EventHistory(
        add(h.item_ids, int(rng.integers(1, 10**9))),
        add(h.behaviors, int(rng.integers(0, cfg.n_behaviors))),
        add(h.scenarios, int(rng.integers(0, cfg.n_scenarios))),
        add(h.timestamps, now),
    )


def make_trace(cfg: AstroConfig, model: SessionModel, concurrency: int, per_lane: int, seed: int) -> Trace:
    """``concurrency`` lanes of ``per_lane`` requests each (whole sessions; the last one cut to fit)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, model.users + 1, dtype=np.float64)
    popularity = ranks**-model.zipf_s
    popularity /= popularity.sum()
    histories: dict[int, EventHistory] = {}
    seen: set[bytes] = set()
    hits = total = sessions = 0
    lanes: list[list[RandomRequest]] = [[] for _ in range(concurrency)]
    clock = NOW
    lane = 0
    while min(len(x) for x in lanes) < per_lane:
        user = int(rng.choice(model.users, p=popularity))
        if user not in histories:
            histories[user] = _history(cfg, rng, int(rng.integers(model.min_events, model.max_events + 1)))
        elif rng.random() < model.p_new_event:
            histories[user] = _grow(cfg, rng, histories[user], clock)
        scenario = int(rng.integers(0, cfg.n_scenarios))
        base = RandomRequest.from_history(histories[user], [1], scenario, clock, cfg)
        key = b"".join(np.ascontiguousarray(getattr(base, name)).tobytes() for name in GRAPH_IO[USER_ENCODER][0])
        sessions += 1
        while len(lanes[lane]) >= per_lane:  # a full lane takes no more sessions
            lane = (lane + 1) % concurrency
        for _ in range(model.k):
            if len(lanes[lane]) >= per_lane:
                break
            clock += 1
            cands = rng.integers(1, 10**9, size=(1, model.candidates)).astype(np.int64)
            stamp = np.array([[clock]], np.int64)
            lanes[lane].append(
                RandomRequest(
                    base.hist_item_ids,
                    base.hist_behaviors,
                    base.hist_scenarios,
                    base.hist_timestamps,
                    base.request_scenario,
                    stamp,
                    cands,
                )
            )
            hits += key in seen
            total += 1
            seen.add(key)
        lane = (lane + 1) % concurrency
    return Trace(lanes, hits / total, sessions, len(histories))


@dataclass(frozen=True)
class SessionRun:
    candidates: int
    cache: str  # "off" or "on"
    throughput_rps: float
    latency_ms: dict[str, float]  # p50, p95, p99, avg (perf_analyzer, client side)
    requests: int  # ensemble requests the server answered during the run
    hits: int  # user_encoder
    misses: int
    scorer_cache_activity: int  # item_scorer hits + misses: must stay 0
    stable: bool
    wrapped: bool  # perf_analyzer sent more requests than the trace holds: repeats inflate the hit rate
    encoder_share: float | None  # user_encoder's share of the two models' compute_infer time in this run

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


def _encoder_share(counters: dict[str, dict[str, int]]) -> float | None:
    enc, scorer = (counters.get(m, {}).get("compute_infer", 0) for m in (USER_ENCODER, ITEM_SCORER))
    return enc / (enc + scorer) if enc + scorer > 0 else None


def run_sessions(
    repository: Path,
    cfg: AstroConfig,
    model: SessionModel,
    candidate_counts: Sequence[int],
    concurrency: int,
    per_lane: int,
    pa: PerfAnalyzer,
    seed: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Each trace (one per candidate count, distinct users) on a cache-off server, then on a fresh cache-on
    server sized by the default rule; returns the model, the traces' figures and one run per (N, cache)."""
    traces = {n: make_trace(cfg, SessionModel(**{**asdict(model), "candidates": n}), concurrency, per_lane, seed + n)
              for n in candidate_counts}  # fmt: skip
    size = cache_sizing(repository).size
    runs: list[SessionRun] = []
    with tempfile.TemporaryDirectory(prefix="astro-sessions-") as tmp:
        work = Path(tmp)
        data = {n: write_input_data(lanes_to_steps(t.lanes), work / f"sessions-n{n}.json") for n, t in traces.items()}
        for side in CACHE_SIDES:
            with TritonServer(repository, cache_size=size if side == "on" else None) as server:
                server.start(ready_models=[ENSEMBLE], timeout_s=180)
                admin = grpcclient.InferenceServerClient(server.grpc_url)
                for n, trace in traces.items():
                    # exactly the trace, each request once; `wrapped` says if the server saw more
                    settings = PaSettings(total_requests=trace.requests)
                    before = server_counters(admin)
                    level = run_level(pa, server.grpc_url, ENSEMBLE, data[n], concurrency, settings, work)
                    counters: dict[str, dict[str, int]] = {}
                    add_delta(counters, before, server_counters(admin))
                    cache = cache_counts(counters)
                    run = SessionRun(
                        candidates=n,
                        cache=side,
                        throughput_rps=level.throughput_rps,
                        latency_ms={k: level.latency_us[k] / 1e3 for k in ("p50", "p95", "p99", "avg")},
                        requests=counters.get(ENSEMBLE, {}).get("success", 0),
                        hits=cache[USER_ENCODER]["cache_hit"],
                        misses=cache[USER_ENCODER]["cache_miss"],
                        scorer_cache_activity=sum(cache[ITEM_SCORER].values()),
                        stable=level.stable,
                        wrapped=counters.get(ENSEMBLE, {}).get("success", 0) > trace.requests,
                        encoder_share=_encoder_share(counters),
                    )
                    runs.append(run)
                    progress(
                        f"  sessions N={n}, cache {side}: {run.throughput_rps:.1f} req/s, "
                        f"p50 {run.latency_ms['p50']:.2f} ms, p99 {run.latency_ms['p99']:.2f} ms, "
                        f"hit rate {100 * run.hit_rate:.0f}% "
                        f"({run.hits}/{run.hits + run.misses}; trace ideal {100 * trace.ideal_hit_rate:.0f}%)"
                    )
                admin.close()
    speedups = {}
    for n in candidate_counts:
        off, on = (next(r for r in runs if r.candidates == n and r.cache == s) for s in CACHE_SIDES)
        speedups[str(n)] = on.throughput_rps / off.throughput_rps
    return {
        "model": asdict(model),
        "concurrency": concurrency,
        "cache_size": size,
        "traces": {
            str(n): {
                "requests": t.requests,
                "sessions": t.sessions,
                "distinct_users": t.distinct_users,
                "ideal_hit_rate": t.ideal_hit_rate,
            }
            for n, t in traces.items()
        },
        "runs": [r.to_dict() for r in runs],
        "throughput_on_over_off": speedups,
    }
