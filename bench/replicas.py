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

    python -m bench.replicas            # -> docs/bench/replicas.json and replicas.md
    python -m bench.replicas --quick    # smoke run, to a temp folder unless --out
    python -m bench.replicas --from-results docs/bench/replicas.json   # re-render replicas.md only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bench.sessions import SessionModel, Trace, make_trace
from client import AstroClient, ServerError
from client.flows import LbPolicy
from client.routing import DEFAULT_LOAD_FACTOR
from contract.config import AstroConfig
from contract.tensors import ENSEMBLE, USER_ENCODER
from model.checkpoint import DEFAULT_CHECKPOINT
from serve.response_cache import cache_sizing
from serve.triton_server import TritonServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "bench"
REPLICA_COUNTS = (1, 2, 3)
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
    latency_ms: dict[str, float]  # p50, p99 of answered requests, client side
    hits: int  # user_encoder, all replicas
    misses: int
    per_replica: list[int]  # ensemble requests each replica answered
    ideal_hit_rate: float  # the trace's, one unbounded cache

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    @property
    def spread(self) -> float:
        """Requests per replica, max / mean (the killed replica counted too)."""
        return max(self.per_replica) / max(float(np.mean(self.per_replica)), 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "hit_rate": self.hit_rate,
            "spread": self.spread,
            "throughput_rps": (self.requests - self.failed) / self.seconds,
        }


def _counters(server: TritonServer) -> tuple[int, int, int]:
    """(ensemble requests, user_encoder cache hits, misses) so far."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = {m["name"]: m for m in client.get_inference_statistics(as_json=True)["model_stats"]}
    finally:
        client.close()
    enc = stats.get(USER_ENCODER, {}).get("inference_stats", {})
    return (
        int(stats.get(ENSEMBLE, {}).get("inference_count", 0)),
        int(enc.get("cache_hit", {}).get("count", 0)),
        int(enc.get("cache_miss", {}).get("count", 0)),
    )


def drive(
    url: str, lb: LbPolicy, trace: Trace, kill: Callable[[], object] | None = None
) -> tuple[list[float], int, float]:
    """Send ``trace`` through one client, a thread per lane; ``kill`` is called once half the requests are sent.
    Returns (latencies of answered requests in s, failed requests, wall seconds)."""
    half = trace.requests // 2
    latencies: list[float] = []
    failed = [0]
    sent = [0]
    lock = threading.Lock()
    with AstroClient(url, lb=lb, timeout_s=DEADLINE_S, max_in_flight=1) as client:

        def lane(requests: Sequence[Any]) -> None:
            for req in requests:
                with lock:
                    sent[0] += 1
                    trigger = kill is not None and sent[0] == half
                if trigger and kill is not None:
                    kill()
                t0 = time.perf_counter()
                try:
                    client.infer_arrays(req.as_dict())
                except ServerError:
                    with lock:
                        failed[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=lane, args=(requests,)) for requests in trace.lanes]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    return latencies, failed[0], wall


def measure(
    servers: Sequence[TritonServer], lb: LbPolicy, trace: Trace, victim: TritonServer | None = None
) -> ReplicaRun:
    before = [_counters(s) for s in servers]
    url = ",".join(s.grpc_url for s in servers)
    at_kill: list[tuple[int, int, int]] = []

    def kill() -> None:
        assert victim is not None
        at_kill.append(_counters(victim))  # its counters die with it: what it answered, read just before
        victim.kill()

    latencies, failed, wall = drive(url, lb, trace, kill if victim is not None else None)
    after = [at_kill[0] if s is victim else _counters(s) for s in servers]
    per_replica = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    hits = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    misses = sum(a[2] - b[2] for a, b in zip(after, before, strict=True))
    lat_ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return ReplicaRun(
        replicas=len(servers),
        lb=lb,
        killed=victim is not None,
        requests=trace.requests,
        failed=failed,
        seconds=wall,
        latency_ms={"p50": float(np.percentile(lat_ms, 50)), "p99": float(np.percentile(lat_ms, 99))},
        hits=hits,
        misses=misses,
        per_replica=per_replica,
        ideal_hit_rate=trace.ideal_hit_rate,
    )


def run_replicas(
    repository: Path,
    cfg: AstroConfig,
    model: SessionModel,
    lanes: int,
    per_lane: int,
    seed: int,
    say: Callable[[str], None],
    counts: Sequence[int] = REPLICA_COUNTS,
) -> dict[str, Any]:
    """Start ``max(counts)`` replicas side by side, run every (R, lb) and the kill run; see the module doc."""
    size = cache_sizing(repository, model.users).size
    servers = [TritonServer(repository, cache_size=size) for _ in range(max(counts))]
    runs: list[ReplicaRun] = []
    try:
        starters = [threading.Thread(target=s.start, kwargs={"ready_models": [ENSEMBLE], "timeout_s": 300}) for s in
                    servers]  # fmt: skip
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        if not all(s.is_running() for s in servers):
            raise SystemExit("bench.replicas: a replica did not start: " + servers[0].log_text()[-2000:])
        policies: dict[int, tuple[LbPolicy, ...]] = {
            r: ("round_robin", "affinity") if r > 1 else ("affinity",) for r in counts
        }
        configs = [(r, lb, False) for r in counts for lb in policies[r]] + [(max(counts), "affinity", True)]
        for k, (r, lb, kill) in enumerate(configs):
            trace = make_trace(cfg, model, lanes, per_lane, seed + 7919 * (k + 1))
            group = servers[:r]
            run = measure(group, lb, trace, group[-1] if kill else None)
            runs.append(run)
            say(
                f"  (h) R={r} {lb}{', one killed half-way' if kill else ''}: {run.requests} requests, "
                f"{run.failed} failed, hit rate "
                f"{100 * run.hit_rate:.1f}% (trace ideal {100 * run.ideal_hit_rate:.1f}%), "
                f"{run.to_dict()['throughput_rps']:.1f} req/s, p99 {run.latency_ms['p99']:.1f} ms, "
                f"per replica {run.per_replica} (max/mean {run.spread:.2f})"
            )
    finally:
        for s in servers:
            s.close()
    return {
        "model": asdict(model),
        "lanes": lanes,
        "per_lane": per_lane,
        "cache_users": model.users,
        "cache_size": size,
        "load_factor": DEFAULT_LOAD_FACTOR,
        "deadline_s": DEADLINE_S,
        "runs": [r.to_dict() for r in runs],
    }


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for issue 20's three goals."""
    runs = results["runs"]
    one = next(r for r in runs if r["replicas"] == 1)
    top = max(r["replicas"] for r in runs)
    aff = next(r for r in runs if r["replicas"] == top and r["lb"] == "affinity" and not r["killed"])
    rr = next(r for r in runs if r["replicas"] == top and r["lb"] == "round_robin")
    kill = next(r for r in runs if r["killed"])
    gap = 100 * (one["hit_rate"] - aff["hit_rate"])
    return [
        (
            f"affinity's hit rate at R = {top} within {GOAL_HIT_POINTS:g} points of R = 1",
            f"{100 * aff['hit_rate']:.1f}% vs {100 * one['hit_rate']:.1f}%: {gap:+.1f} points below "
            f"(round_robin at R = {top}: {100 * rr['hit_rate']:.1f}%)",
            gap <= GOAL_HIT_POINTS,
        ),
        (
            f"requests per replica max / mean <= {GOAL_SPREAD:g} (affinity, R = {top})",
            f"{aff['spread']:.2f} ({aff['per_replica']})",
            aff["spread"] <= GOAL_SPREAD,
        ),
        ("zero failed requests in the kill run", f"{kill['failed']} of {kill['requests']}", kill["failed"] == 0),
    ]


def render(results: dict[str, Any]) -> str:
    """The section's markdown, from its results."""
    m = results["model"]
    lines = [
        f"Zipf session traffic (s = {m['zipf_s']}, {m['users']} users, k = {m['k']} requests per session, "
        f"N = {m['candidates']}), {results['lanes']} client lanes x {results['per_lane']} requests per run, "
        f"through one `AstroClient` per run; each replica has its own response cache for {results['cache_users']} "
        f"users ({results['cache_size'] / 2**20:.0f} MiB). Affinity's load bound c = {results['load_factor']}. "
        "The replicas share this machine's cores (and other processes ran beside them): req/s and latency "
        "measure one shared machine, not scale-out; the hit rate, the spread and the failures are what carry "
        "over to a cluster. "
        "In the kill run the killed replica's counters are read just before it is killed (calls in flight on it "
        "then fail over and are counted where they are answered).",
        "",
        "| R | routing | requests | failed | hit rate (Triton) | trace ideal | req/s | p50 ms | p99 ms | "
        "requests per replica | max / mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        routing = "affinity, one replica killed half-way" if r["killed"] else r["lb"]
        lines.append(
            f"| {r['replicas']} | {routing} | {r['requests']} | {r['failed']} | {100 * r['hit_rate']:.1f}% | "
            f"{100 * r['ideal_hit_rate']:.1f}% | {r['throughput_rps']:.1f} | {r['latency_ms']['p50']:.1f} | "
            f"{r['latency_ms']['p99']:.1f} | {' / '.join(str(n) for n in r['per_replica'])} | {r['spread']:.2f} |"
        )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {v} | {'yes' if ok else 'no'} |" for g, v, ok in goals(results)]
    return "\n".join(lines)


def write(out: Path, results: dict[str, Any]) -> None:
    """replicas.json and replicas.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "replicas.md").write_text(
        "# (h) Replicas: affinity vs round_robin\n\nGenerated by `python -m bench.replicas` from "
        f"`replicas.json`; do not edit by hand. This run: `{results['command']}`.\n\n" + render(results) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few requests, to a temp folder unless --out")
    p.add_argument("--out", type=Path, default=None, help=f"folder for replicas.json and .md (default {DEFAULT_OUT})")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to export and serve")
    p.add_argument("--lanes", type=int, default=8, help="client lanes (threads), one request in flight each")
    p.add_argument("--per-lane", type=int, default=None, help="requests per lane and run (default 120; quick 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the traces")
    p.add_argument("--from-results", type=Path, default=None, help="re-render replicas.md from this JSON, run nothing")
    a = p.parse_args(argv)
    if a.from_results is not None:
        results = json.loads(a.from_results.read_text())
        write(a.out or a.from_results.parent, results)
        print(render(results))
        return 0
    per_lane = a.per_lane or (6 if a.quick else 120)
    if min(a.lanes, per_lane) < 1:
        p.error("--lanes and --per-lane must be >= 1")
    from export.__main__ import main as export_main  # torch only here: the section itself is torch-free
    from model.checkpoint import load_config

    cfg = load_config(a.checkpoint)
    with tempfile.TemporaryDirectory(prefix="astro-replicas-") as tmp:
        out = a.out or (Path(tmp) / "out" if a.quick else DEFAULT_OUT)
        repo = Path(tmp) / "repo"
        args = ["--target", "python", "--checkpoint", str(a.checkpoint), "--out", str(repo)]
        if export_main([*args, "--work-dir", str(Path(tmp) / "onnx"), "--skip-parity"]) != 0:
            raise SystemExit("bench.replicas: python -m export failed")

        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        results = run_replicas(repo, cfg, SessionModel(), a.lanes, per_lane, a.seed, say)
        results["command"] = " ".join(["python -m bench.replicas", *(sys.argv[1:] if argv is None else argv)])
        write(out, results)
        print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
