"""A bounded soak: 16 client threads against the real server for ASTRO_SOAK_SECONDS (default 20 s,
loopback only, stops by itself). Zero errors, every answer equal to the PyTorch reference, and
the server's resident memory (tritonserver + its Python-backend stubs) growth reported and bounded."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.machine import cpu_model
from client import AstroClient, ScoreRequest, ServerOverloadedError
from contract.request_batch import RequestBatch
from export.parity import torch_split
from model.astro import AstroModel
from model.synthetic import SyntheticWorld, WorldSpec
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
THREADS = 16
SOAK_SECONDS = float(os.environ.get("ASTRO_SOAK_SECONDS", "20"))
ATOL = 1e-5  # served vs PyTorch, fp32: the parity tolerance of export/parity.py
MAX_RSS_GROWTH_MB = 150  # after warmup: allocator caches settle; a leak per request would pass this fast


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process exited while we read
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(fields["Pid"]))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def reference(model: AstroModel, r: ScoreRequest) -> npt.NDArray[np.float32]:
    """PyTorch split path (held to per-pair by test_model_paths) for one user -> [N, T]."""
    req = RequestBatch.from_history(r.history, r.candidates, r.scenario, r.timestamp, model.cfg)
    scores: npt.NDArray[np.float32] = torch_split(model, req, "fp32")[1][0]
    return scores


def test_soak(triton: TritonServer, small_model: AstroModel, seed: int) -> None:
    rng = np.random.default_rng(seed)
    world = SyntheticWorld(WorldSpec(seed=int(rng.integers(1000))))
    pool = [
        ScoreRequest(world.user(rng)[0], rng.integers(1, 10**9, size=int(rng.integers(16, 256))),
                     int(rng.integers(0, 4)), 1_700_000_000)
        for _ in range(48)
    ]  # fmt: skip
    expected = [reference(small_model, r) for r in pool]
    latencies: list[float] = []
    errors: list[BaseException] = []
    refused: list[int] = []
    mismatches: list[int] = []
    stop = threading.Event()

    def worker(index: int) -> None:
        local = np.random.default_rng([seed, index])
        with AstroClient(triton.grpc_url, timeout_s=30) as client:
            while not stop.is_set():
                i = int(local.integers(len(pool)))
                t0 = time.perf_counter()
                try:
                    got = client.score(pool[i].history, pool[i].candidates, pool[i].scenario, pool[i].timestamp)
                except ServerOverloadedError:  # admission control refused it at once: designed, not a fault
                    refused.append(i)
                    continue
                except Exception as e:  # every other failure is collected and fails the test below
                    errors.append(e)
                    continue
                latencies.append(time.perf_counter() - t0)
                if not np.allclose(got, expected[i], atol=ATOL, rtol=0):
                    mismatches.append(i)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(min(5.0, SOAK_SECONDS / 4))  # warmup: arenas and caches fill before the baseline
    assert triton.pid is not None
    rss_before, n_before, t_start = tree_rss_mb(triton.pid), len(latencies), time.perf_counter()
    time.sleep(SOAK_SECONDS)
    rss_after, n_after, elapsed = tree_rss_mb(triton.pid), len(latencies), time.perf_counter() - t_start
    stop.set()
    for t in threads:
        t.join(timeout=60)
    lat_ms = np.array(latencies) * 1000
    print(
        f"\nsoak: {THREADS} threads, {elapsed:.0f} s, {n_after - n_before} requests "
        f"({(n_after - n_before) / elapsed:.1f}/s), latency p50 {np.percentile(lat_ms, 50):.1f} ms "
        f"p99 {np.percentile(lat_ms, 99):.1f} ms, refused {len(refused)}, errors {len(errors)}, "
        f"mismatches {len(mismatches)}, "
        f"server RSS {rss_before:.0f} -> {rss_after:.0f} MB ({rss_after - rss_before:+.0f} MB)"
    )
    if os.environ.get("ASTRO_SOAK_OUT"):  # the figures docs/reliability.md's table is written from (bench.soak_doc)
        figures = {
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{len(os.sched_getaffinity(0))} cores, {cpu_model()}",
            "threads": THREADS,
            "seconds": elapsed,
            "requests": n_after - n_before,
            "rps": (n_after - n_before) / elapsed,
            "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)),
            "refused": len(refused),
            "errors": len(errors),
            "mismatches": len(mismatches),
            "atol": ATOL,
            "rss_before_mb": rss_before,
            "rss_after_mb": rss_after,
            "max_rss_growth_mb": MAX_RSS_GROWTH_MB,
        }
        Path(os.environ["ASTRO_SOAK_OUT"]).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors[:3]
    assert mismatches == []
    assert n_after - n_before >= THREADS, "the soak made almost no progress"
    assert rss_after - rss_before < MAX_RSS_GROWTH_MB
