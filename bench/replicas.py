"""(h) Replicas: session traffic against R = 1, 2, 3 local Triton replicas, round_robin vs affinity.

Each replica is a ``tritonserver`` of its own on free loopback ports, serving the same exported
repository with its own response cache (room for every user of the trace at the longest
history, so at R = 1 nothing is evicted). The traffic is the Zipf session model of (f)
(:mod:`bench.sessions`): ``lanes`` client threads, each sending whole sessions one request
after the other, through one :class:`client.AstroClient` with ``lb="round_robin"`` or
``lb="affinity"`` (:mod:`client.routing`), so the routing under test is the client's own
(perf_analyzer sends to one address and cannot route by key). Every configuration gets a fresh
trace (new users: nothing cached by an earlier run can hit). Measured per run:

- the hit rate from Triton's statistics (``user_encoder``'s cache hits / lookups, summed over
  the replicas), beside the trace's ideal (one unbounded cache, requests in trace order);
- throughput (requests / wall time), client-side p50 / p99;
- requests per replica (the ensemble's inference counts) and their max / mean;
- failed requests; and a last run, R = 3 with affinity, in which one replica is SIGKILLed once
  half of the requests are sent (its users fail over to their next replica).

On one machine the replicas share its cores, so req/s and latency measure that machine, not
scale-out: the figures that carry over to a cluster are the hit rate, the spread and the failures.

    python -m bench.replicas                  # this section alone -> docs/bench/replicas.json, replicas.md
    python -m bench.replicas --preset quick   # smoke run, to a temp folder unless --out
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bench.goal import Goal
from bench.served import server_counters
from bench.sessions import SessionModel, Trace, make_trace
from bench.timing import Stats, in_threads
from client import AstroClient, ServerError
from client.flows import LbPolicy
from client.routing import DEFAULT_LOAD_FACTOR
from contract.config import AstroConfig
from contract.tensors import ENSEMBLE, USER_ENCODER
from serve.response_cache import cache_sizing
from serve.triton_server import TritonServer

DEADLINE_S = 30.0  # per request: far above any latency here, so a failure is a failure, not a slow answer
GOAL_HIT_POINTS = 5.0  # affinity's hit rate at R = 3 within this many points of R = 1
GOAL_SPREAD = 1.25  # requests per replica, max / mean


@dataclass(frozen=True)
class ReplicaRun:
    replicas: int
    lb: str
    killed: bool  # one replica SIGKILLed half-way
    requests: int  # sent by the client
    failed: int
    seconds: float
    latency_ms: Stats  # answered requests, client side
    hits: int  # user_encoder, all replicas
    misses: int
    per_replica: list[int]  # ensemble requests each replica answered
    ideal_hit_rate: float  # the trace's, one unbounded cache
    hit_rate: float
    spread: float  # requests per replica, max / mean (the killed replica counted too)
    throughput_rps: float


@dataclass(frozen=True)
class Replicas:
    model: SessionModel
    lanes: int
    per_lane: int
    cache_users: int
    cache_size: int
    load_factor: float
    deadline_s: float
    runs: list[ReplicaRun]
    command: str = ""  # set by the standalone CLI


def _counters(server: TritonServer) -> tuple[int, int, int]:
    """(ensemble requests, user_encoder cache hits, misses) so far."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        c = server_counters(client)
    finally:
        client.close()
    return c[ENSEMBLE]["inference_count"], c[USER_ENCODER]["cache_hit"], c[USER_ENCODER]["cache_miss"]


def drive(
    url: str, lb: LbPolicy, trace: Trace, kill: Callable[[], object] | None = None
) -> tuple[list[float], int, float]:
    """Send ``trace`` through one client, a thread per lane; ``kill`` is called once half the requests are sent.
    Returns (latencies of answered requests in s, failed requests, wall seconds)."""
    half = trace.requests // 2
    latencies: list[float] = []
    failed = sent = 0
    lock = threading.Lock()
    with AstroClient(url, lb=lb, timeout_s=DEADLINE_S, max_in_flight=1) as client:

        def lane(requests: Sequence[Any]) -> None:
            nonlocal failed, sent
            for req in requests:
                with lock:
                    sent += 1
                    trigger = sent == half
                if trigger and kill is not None:
                    kill()
                t0 = time.perf_counter()
                try:
                    client.infer_arrays(req.as_dict())
                except ServerError:
                    with lock:
                        failed += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

        wall = in_threads([partial(lane, requests) for requests in trace.lanes])
    return latencies, failed, wall


def measure(
    servers: Sequence[TritonServer], lb: LbPolicy, trace: Trace, victim: TritonServer | None = None
) -> ReplicaRun:
    before = [_counters(s) for s in servers]
    at_kill: list[tuple[int, int, int]] = []

    def kill() -> None:
        assert victim is not None
        at_kill.append(_counters(victim))  # its counters die with it: what it answered, read just before
        victim.kill()

    url = ",".join(s.grpc_url for s in servers)
    latencies, failed, wall = drive(url, lb, trace, kill if victim is not None else None)
    after = [at_kill[0] if s is victim else _counters(s) for s in servers]
    ran, hits, misses = ([a[i] - b[i] for a, b in zip(after, before, strict=True)] for i in range(3))
    return ReplicaRun(
        replicas=len(servers),
        lb=lb,
        killed=victim is not None,
        requests=trace.requests,
        failed=failed,
        seconds=wall,
        latency_ms=Stats.of([1e3 * t for t in latencies] or [0.0]),
        hits=sum(hits),
        misses=sum(misses),
        per_replica=ran,
        ideal_hit_rate=trace.ideal_hit_rate,
        hit_rate=sum(hits) / max(sum(hits) + sum(misses), 1),
        spread=max(ran) / max(float(np.mean(ran)), 1e-9),
        throughput_rps=(trace.requests - failed) / wall,
    )


def run_replicas(
    repository: Path,
    cfg: AstroConfig,
    model: SessionModel,
    lanes: int,
    per_lane: int,
    seed: int,
    say: Callable[[str], None],
    counts: Sequence[int] = (1, 2, 3),
) -> Replicas:
    """Start ``max(counts)`` replicas side by side, run every (R, lb) and the kill run; see the module doc."""
    size = cache_sizing(repository, model.users).size
    servers = [TritonServer(repository, cache_size=size) for _ in range(max(counts))]
    runs: list[ReplicaRun] = []
    try:
        in_threads([partial(s.start, ready_models=[ENSEMBLE], timeout_s=300) for s in servers])
        if not all(s.is_running() for s in servers):
            raise SystemExit("bench.replicas: a replica did not start: " + servers[0].log_text()[-2000:])
        policies: tuple[LbPolicy, ...] = ("round_robin", "affinity")
        configs = [(r, lb, False) for r in counts for lb in (policies if r > 1 else policies[1:])]
        for k, (r, lb, kill) in enumerate([*configs, (max(counts), "affinity", True)]):
            trace = make_trace(cfg, model, lanes, per_lane, seed + 7919 * (k + 1))
            group = servers[:r]
            run = measure(group, lb, trace, group[-1] if kill else None)
            runs.append(run)
            say(
                f"  (h) R={r} {lb}{', one killed half-way' if kill else ''}: {run.requests} requests, "
                f"{run.failed} failed, hit rate {100 * run.hit_rate:.1f}% (trace ideal "
                f"{100 * run.ideal_hit_rate:.1f}%), {run.throughput_rps:.1f} req/s, p99 {run.latency_ms.p99:.1f} ms, "
                f"per replica {run.per_replica} (max/mean {run.spread:.2f})"
            )
    finally:
        for s in servers:
            s.close()
    return Replicas(model, lanes, per_lane, model.users, size, DEFAULT_LOAD_FACTOR, DEADLINE_S, runs)


def goals(results: Replicas) -> list[Goal]:
    """Issue 20's three goals."""
    runs = results.runs
    one = next(r for r in runs if r.replicas == 1)
    top = max(r.replicas for r in runs)
    aff = next(r for r in runs if r.replicas == top and r.lb == "affinity" and not r.killed)
    rr = next(r for r in runs if r.replicas == top and r.lb == "round_robin")
    kill = next(r for r in runs if r.killed)
    gap = 100 * (one.hit_rate - aff.hit_rate)
    return [
        Goal(
            "",
            f"affinity's hit rate at R = {top} within {GOAL_HIT_POINTS:g} points of R = 1",
            gap <= GOAL_HIT_POINTS,
            f"{100 * aff.hit_rate:.1f}% vs {100 * one.hit_rate:.1f}%: {gap:+.1f} points below "
            f"(round_robin at R = {top}: {100 * rr.hit_rate:.1f}%)",
        ),
        Goal(
            "",
            f"requests per replica max / mean <= {GOAL_SPREAD:g} (affinity, R = {top})",
            aff.spread <= GOAL_SPREAD,
            f"{aff.spread:.2f} ({aff.per_replica})",
        ),
        Goal("", "zero failed requests in the kill run", kill.failed == 0, f"{kill.failed} of {kill.requests}"),
    ]


if __name__ == "__main__":
    from bench.__main__ import section_main

    sys.exit(section_main("replicas"))
