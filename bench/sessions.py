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
Both servers run side by side; each round sends a fresh trace (new users) to both, order alternating,
and the cache's gain is the on/off throughput ratio taken inside each round. Throughput is the closed
loop's rate, concurrency / mean latency (Little's law: each lane always has one request in flight);
perf_analyzer's own figure for a ``--request-count`` run divides by its duration in whole seconds,
too coarse for traces of a few seconds. The hit rate comes from
Triton's statistics (``user_encoder``'s cache hits / (hits + misses));
the trace's own "ideal" rate (an unbounded cache, requests in trace order) is given beside it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bench.perf_analyzer import PaSettings, PerfAnalyzer, lanes_to_steps, run_level, write_input_data
from bench.served import add_delta, cache_counts, server_counters
from bench.timing import Stats
from contract.blocks import FIELDS, EventHistory
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, GRAPH_IO, ITEM_SCORER, USER_ENCODER
from model.random_inputs import NOW, random_history
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
    lanes: list[list[RequestBatch]]
    ideal_hit_rate: float  # unbounded cache, requests in trace order
    sessions: int
    distinct_users: int

    @property
    def requests(self) -> int:
        return sum(len(lane) for lane in self.lanes)


def _grow(cfg: AstroConfig, rng: np.random.Generator, h: EventHistory, now: int) -> EventHistory:
    """``h`` with one more random event, at ``now``."""
    event = random_history(rng, 1, cfg, timestamps=(now, now + 1))
    return EventHistory(*(np.append(getattr(h, f), getattr(event, f)) for f in FIELDS))


def make_trace(cfg: AstroConfig, model: SessionModel, concurrency: int, per_lane: int, seed: int) -> Trace:
    """``concurrency`` lanes of ``per_lane`` requests each (whole sessions; the last one cut to fit)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, model.users + 1, dtype=np.float64)
    popularity = ranks**-model.zipf_s
    popularity /= popularity.sum()
    histories: dict[int, EventHistory] = {}
    seen: set[bytes] = set()
    hits = total = sessions = 0
    lanes: list[list[RequestBatch]] = [[] for _ in range(concurrency)]
    clock = NOW
    lane = 0
    while min(len(x) for x in lanes) < per_lane:
        user = int(rng.choice(model.users, p=popularity))
        if user not in histories:
            histories[user] = random_history(rng, int(rng.integers(model.min_events, model.max_events + 1)), cfg)
        elif rng.random() < model.p_new_event:
            histories[user] = _grow(cfg, rng, histories[user], clock)
        scenario = int(rng.integers(0, cfg.n_scenarios))
        base = RequestBatch.from_history(histories[user], [1], scenario, clock, cfg)
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
            lanes[lane].append(dataclasses.replace(base, request_timestamp=stamp, cand_item_ids=cands))
            hits += key in seen
            total += 1
            seen.add(key)
        lane = (lane + 1) % concurrency
    return Trace(lanes, hits / total, sessions, len(histories))


@dataclass(frozen=True)
class SessionRun:
    candidates: int
    cache: str  # "off" or "on"
    throughput_rps: float  # concurrency / mean latency: the closed loop's rate (Little's law)
    pa_throughput_rps: float  # perf_analyzer's figure: requests over its duration in whole seconds (coarse)
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
    rounds: int = 3,
) -> dict[str, Any]:
    """A cache-off and a cache-on server (sized by the default rule) up side by side; each round sends a fresh
    trace per candidate count (new users: nothing cached from earlier rounds can hit) to both, order
    alternating, so load from other processes lands on both. Returns the model, the traces, every run and a
    per-N summary: the on/off throughput ratio per round, the hit rate over all rounds."""
    size = cache_sizing(repository).size
    runs: list[dict[str, Any]] = []
    traces: dict[int, list[Trace]] = {n: [] for n in candidate_counts}
    with (
        tempfile.TemporaryDirectory(prefix="astro-sessions-") as tmp,
        TritonServer(repository) as off_server,
        TritonServer(repository, cache_size=size) as on_server,
    ):
        work = Path(tmp)
        servers = {"off": off_server, "on": on_server}
        for server in servers.values():
            server.start(ready_models=[ENSEMBLE], timeout_s=180)
        admins = {side: grpcclient.InferenceServerClient(server.grpc_url) for side, server in servers.items()}
        for r in range(rounds):
            for n in candidate_counts:
                sub = SessionModel(**{**asdict(model), "candidates": n})
                trace = make_trace(cfg, sub, concurrency, per_lane, seed + 7919 * r + n)
                traces[n].append(trace)
                data = write_input_data(lanes_to_steps(trace.lanes), work / f"sessions-r{r}-n{n}.json")
                settings = PaSettings(total_requests=trace.requests)  # the whole trace, each request once
                for side in CACHE_SIDES if r % 2 == 0 else CACHE_SIDES[::-1]:
                    before = server_counters(admins[side])
                    level = run_level(pa, servers[side].grpc_url, ENSEMBLE, data, concurrency, settings, work)
                    counters: dict[str, dict[str, int]] = {}
                    add_delta(counters, before, server_counters(admins[side]))
                    cache = cache_counts(counters)
                    done = counters.get(ENSEMBLE, {}).get("success", 0)
                    run = SessionRun(
                        candidates=n,
                        cache=side,
                        throughput_rps=concurrency * 1e6 / level.latency_us["avg"],
                        pa_throughput_rps=level.throughput_rps,
                        latency_ms={k: level.latency_us[k] / 1e3 for k in ("p50", "p95", "p99", "avg")},
                        requests=done,
                        hits=cache[USER_ENCODER]["cache_hit"],
                        misses=cache[USER_ENCODER]["cache_miss"],
                        scorer_cache_activity=sum(cache[ITEM_SCORER].values()),
                        stable=level.stable,
                        wrapped=done > trace.requests,
                        encoder_share=_encoder_share(counters),
                    )
                    runs.append({"round": r, **run.to_dict()})
                    progress(
                        f"  sessions round {r + 1}/{rounds} N={n}, cache {side}: {run.throughput_rps:.1f} req/s, "
                        f"p50 {run.latency_ms['p50']:.2f} ms, p99 {run.latency_ms['p99']:.2f} ms, "
                        f"hit rate {100 * run.hit_rate:.0f}% "
                        f"({run.hits}/{run.hits + run.misses}; trace ideal {100 * trace.ideal_hit_rate:.0f}%)"
                    )
        for admin in admins.values():
            admin.close()
    return {
        "model": asdict(model),
        "concurrency": concurrency,
        "rounds": rounds,
        "cache_size": size,
        "traces": {
            str(n): {
                "requests": ts[0].requests,
                "sessions": sum(t.sessions for t in ts),
                "distinct_users": sum(t.distinct_users for t in ts),
                "ideal_hit_rate": float(np.mean([t.ideal_hit_rate for t in ts])),
            }
            for n, ts in traces.items()
        },
        "runs": runs,
        "summary": {str(n): summarise([x for x in runs if x["candidates"] == n]) for n in candidate_counts},
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One N's runs: per side the median throughput and p50/p99 over rounds, the hits pooled; the on/off
    throughput ratio per round."""
    side_runs = {
        side: sorted((x for x in runs if x["cache"] == side), key=lambda x: x["round"]) for side in CACHE_SIDES
    }
    out: dict[str, Any] = {}
    for side, xs in side_runs.items():
        hits, misses = sum(x["hits"] for x in xs), sum(x["misses"] for x in xs)
        shares = [x["encoder_share"] for x in xs if x["encoder_share"] is not None]
        out[side] = {
            "throughput_rps": float(np.median([x["throughput_rps"] for x in xs])),
            "p50_ms": float(np.median([x["latency_ms"]["p50"] for x in xs])),
            "p99_ms": float(np.median([x["latency_ms"]["p99"] for x in xs])),
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / max(hits + misses, 1),
            "encoder_share": float(np.median(shares)) if shares else None,
            "scorer_cache_activity": sum(x["scorer_cache_activity"] for x in xs),
            "wrapped": any(x["wrapped"] for x in xs),
        }
    ratios = [a["throughput_rps"] / b["throughput_rps"] for a, b in zip(side_runs["on"], side_runs["off"], strict=True)]
    out["throughput_on_over_off"] = Stats.of(ratios).to_dict()
    return out
