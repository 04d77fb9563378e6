"""Overload: offered load at 1x, 2x, 4x, 8x the measured capacity, without and with the queue bounds.

    python -m bench.overload                 # this section alone -> docs/bench/overload.json, overload.md
    python -m bench.overload --preset quick  # smoke run into a temp folder

One ``python -m export --target python`` repository is served twice by the ``tritonserver`` of the
nvidia-pytriton wheel (response cache off, so every request computes): **before**, its composing models'
queue policy removed (Triton's default: unbounded queues, no timeout), and **after**, as exported
(contract/admission.py). Capacity is the throughput of a closed loop of ``capacity_concurrency``
callers on the *after* server; both servers then get the same open-loop load (Poisson arrivals, seeded)
at each multiple of it, from one asyncio ``tritonclient.grpc.aio`` client (perf_analyzer sends no
per-request timeout and stops at the first refusal, so it cannot drive this). Each request carries the
caller's deadline as ``AstroClient`` sends it: its share per queue of the ensemble
(``contract.admission.QUEUED_STEPS``) as Triton's per-request ``timeout``, which each composing model's
queue times afresh; an answer after the deadline counts as late. Its
gRPC deadline is kept long (:data:`CALL_TIMEOUT_S`): on Triton 2.51 clients cancelling thousands of
requests in flight crashed the server (``std::system_error: Invalid argument``, then a corrupted heap;
the gRPC frontend's cancellation race, server issue 7368, fixed in 2.53 by server PR 7840).

Per level: goodput (answers within the deadline per second), p50/p99 of the answered requests, p99 of the
refusals' latency, the server's peak RSS (tritonserver + stubs, sampled from ``/proc``), and executions
for requests already past their deadline: rows item_scorer ran (Triton's statistics) minus answers the
caller got in time. The sender's achieved rate is reported beside the offered one: on a small machine the
client shares the cores with the server.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from bench.goal import Goal
from bench.served import group_usage, infer_fn, server_counters, server_cpu_seconds
from bench.timing import Stats, in_threads
from bench.variants import QueueBound, queue_bounds, unbounded
from bench.workload import make_request
from contract.admission import QUEUE_WAIT_MS, SERVICE_MS, queue_timeout_us
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, GRAPHS, ITEM_SCORER, USER_ENCODER
from serve.triton_server import TritonServer

BEFORE, AFTER = "before: unbounded queues", "after: bounded queues (as exported)"
QUEUE_FULL, TIMED_OUT = "Exceeds maximum queue size", "Request timeout expired"
CALL_TIMEOUT_S = 120.0  # gRPC deadline of each call: long, so that no call is cancelled in flight (above)
WARM_CALLERS = 16  # the small config's max_batch_size: the dynamic batcher can form its largest batches


@dataclass(frozen=True)
class Settings:
    multiples: tuple[int, ...] = (1, 2, 4, 8)
    seconds: float = 6.0  # open-loop duration per level
    capacity_seconds: float = 6.0
    capacity_concurrency: int = 8  # callers of the closed loop that measures the capacity
    warm_seconds: float = 2.0  # WARM_CALLERS callers before it, uncounted
    deadline_ms: float = 250.0  # the caller's deadline: a few times p99 at capacity, as a ranking call's budget
    requests: int = 64  # distinct requests cycled through (B=1, Tb=48, N=256: the sizing's typical request)
    block_len: int = 48
    candidates: int = 256
    seed: int = 0


class PeakRss:
    """The largest resident memory of a process group while the ``with`` block runs (sampled every 50 ms), split."""

    def __init__(self, pgid: int) -> None:
        self.pgid, self.peak_mb, self.split_mb = pgid, 0.0, {"tritonserver": 0.0, "backend_stubs": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = {part: rss for part, (_, rss) in group_usage(self.pgid).items()}
            if sum(now.values()) > self.peak_mb:
                self.peak_mb, self.split_mb = sum(now.values()), now
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Outcomes:
    """What the callers of one level saw."""

    sent: int = 0
    seconds: float = 0.0
    answered_s: list[float] = field(default_factory=list)  # latency of every answer, in time or late
    queue_full_s: list[float] = field(default_factory=list)  # refused UNAVAILABLE: a queue was full
    timed_out_s: list[float] = field(default_factory=list)  # refused UNAVAILABLE: its timeout expired in a queue
    deadline_exceeded: int = 0  # the gRPC deadline (CALL_TIMEOUT_S) passed: a call never answered
    other: list[str] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)  # how late each request left against its schedule


async def open_loop(url: str, requests: Sequence[RequestBatch], rate: float, s: Settings) -> Outcomes:
    """Poisson arrivals at ``rate`` per second for ``s.seconds``, each request with the caller's deadline."""
    rng = np.random.default_rng(s.seed)
    deadline_s = s.deadline_ms / 1e3
    queue_us = queue_timeout_us(deadline_s)  # each queue's share, as the client sends it
    prepared = []
    for req in requests:
        inputs = []
        for name, arr in req.as_dict().items():
            inp = grpcaio.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        prepared.append(inputs)
    out = Outcomes()
    async with grpcaio.InferenceServerClient(url) as client:

        async def one(inputs: list[Any]) -> None:
            t0 = time.perf_counter()
            try:
                await client.infer(ENSEMBLE, inputs, timeout=queue_us, client_timeout=CALL_TIMEOUT_S)
                out.answered_s.append(time.perf_counter() - t0)
            except grpcclient.InferenceServerException as e:
                message = e.message() or ""
                if "Deadline Exceeded" in message or e.status() == "StatusCode.DEADLINE_EXCEEDED":
                    out.deadline_exceeded += 1
                elif e.status() == "StatusCode.UNAVAILABLE" and (QUEUE_FULL in message or TIMED_OUT in message):
                    (out.queue_full_s if QUEUE_FULL in message else out.timed_out_s).append(time.perf_counter() - t0)
                else:
                    out.other.append(f"{e.status()}: {message[:120]}")

        tasks = []
        start = time.perf_counter()
        at = 0.0
        while at < s.seconds:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out.send_lag_s.append(max(0.0, time.perf_counter() - start - at))
            tasks.append(asyncio.ensure_future(one(prepared[out.sent % len(prepared)])))
            out.sent += 1
            at += rng.exponential(1.0 / rate)
        out.seconds = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return out


def _ms(samples: list[float]) -> Stats | None:
    return Stats.of([t * 1e3 for t in samples]) if samples else None


@dataclass(frozen=True)
class Level:
    """One offered load on one variant: what the callers saw and what the server did."""

    variant: str
    multiple: int
    offered_rps: float
    sent_rps: float
    sent: int
    answered: int
    goodput_rps: float  # answers within the deadline per second
    admitted_ms: Stats | None  # latency of every answer, in time or late
    refused: int
    queue_full: int
    timed_out: int
    refusal_ms: Stats | None  # a full queue refuses at once: its latency is the goal's
    timeout_refusal_ms: Stats | None  # a timeout refusal waited its timeout by design
    late: int
    deadline_exceeded: int
    other_errors: list[str]
    peak_rss_mb: float
    peak_rss_split_mb: dict[str, float]
    encoder_rows: int
    scorer_rows: int
    expired_executions: int  # item_scorer rows run for callers that got no answer within their deadline
    send_lag_ms_p99: float  # the client's own delay in sending: it inflates every latency measured here
    cpu_s: dict[str, float]  # the load client's and the server's (tritonserver + stubs) CPU seconds
    compute_ms_per_request: dict[str, float] | None = None  # Triton's compute time per request that ran

    @property
    def p99(self) -> float:
        return self.admitted_ms.p99 if self.admitted_ms else float("inf")


@dataclass(frozen=True)
class Capacity:
    rps: float
    latency_ms: Stats | None
    refused: int
    callers: int


@dataclass(frozen=True)
class Sizing:
    queue_wait_ms: float
    service_ms: dict[str, float]


@dataclass(frozen=True)
class Overload:
    settings: Settings
    capacity: Capacity  # as exported
    capacity_before: Capacity
    bounds: dict[str, QueueBound]
    sizing: Sizing
    levels: list[Level]
    command: str = ""  # set by the standalone CLI

    def at(self, variant: str) -> dict[int, Level]:
        return {lv.multiple: lv for lv in self.levels if lv.variant == variant}


def closed_loop(url: str, requests: Sequence[RequestBatch], callers: int, seconds: float) -> Capacity:
    """``callers`` threads sending back to back for ``seconds``: answers per second, their latency, and the
    refusals (a closed loop of more callers than the queues hold is refused too, which is the point)."""
    infer = [infer_fn(url) for _ in range(callers)]
    answered: list[float] = []
    refused = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        nonlocal refused
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                infer[i](requests[(i + len(answered) + refused) % len(requests)])
            except grpcclient.InferenceServerException as e:
                if e.status() != "StatusCode.UNAVAILABLE":
                    raise
                with lock:
                    refused += 1
                continue
            with lock:
                answered.append(time.perf_counter() - t0)

    wall = in_threads([partial(loop, i) for i in range(callers)])
    return Capacity(len(answered) / wall, _ms(answered), refused, callers)


def wait_idle(admin: Any, timeout_s: float = 120.0) -> dict[str, dict[str, int]]:
    """Triton's counters once no composing model has run anything for 0.5 s: work the callers abandoned
    (unbounded queues keep it) is done before the next level starts, and counted in this one."""
    last, deadline = server_counters(admin), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server_counters(admin)
        if all(now[g]["execution_count"] == last[g]["execution_count"] for g in GRAPHS):
            return now
        last = now
    return last


def run_variant(
    repository: Path,
    variant: str,
    rate_1x: float | None,
    requests: Sequence[RequestBatch],
    s: Settings,
    say: Callable[[str], None],
) -> tuple[Capacity, list[Level]]:
    """Serve ``repository``; measure its capacity (a closed loop of ``s.capacity_concurrency`` callers after an
    uncounted one of ``WARM_CALLERS`` that warms the instances at large dynamic batches, their peak working
    memory), then offer every multiple of ``rate_1x`` (this capacity when None)."""
    with TritonServer(repository) as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        assert server.pid is not None, "a started server has a process id"
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        closed_loop(server.grpc_url, requests, WARM_CALLERS, s.warm_seconds)
        cap = closed_loop(server.grpc_url, requests, s.capacity_concurrency, s.capacity_seconds)
        p99 = cap.latency_ms.p99 if cap.latency_ms else float("nan")
        say(f"  {variant}: capacity {cap.rps:.1f} req/s (closed loop of {s.capacity_concurrency}), p99 {p99:.1f} ms")
        rate = cap.rps if rate_1x is None else rate_1x
        rows = []
        for multiple in s.multiples:
            before = wait_idle(admin)
            cpu0, server0 = time.process_time(), sum(server_cpu_seconds(server.pid).values())
            with PeakRss(server.pid) as rss:
                o = asyncio.run(open_loop(server.grpc_url, requests, multiple * rate, s))
                after = wait_idle(admin)
            ran = {g: after[g]["inference_count"] - before[g]["inference_count"] for g in GRAPHS}
            # Triton's compute time per request (a batch's time counts for each of its requests): what one
            # request cost while the instances shared the cores with everything else
            infer_ns = {g: after[g]["compute_infer"] - before[g]["compute_infer"] for g in GRAPHS}
            in_time = [t for t in o.answered_s if t <= s.deadline_ms / 1e3]
            row = Level(
                variant=variant,
                multiple=multiple,
                offered_rps=multiple * rate,
                sent_rps=o.sent / o.seconds,
                sent=o.sent,
                answered=len(o.answered_s),
                goodput_rps=len(in_time) / o.seconds,
                admitted_ms=_ms(o.answered_s),
                refused=len(o.queue_full_s) + len(o.timed_out_s),
                queue_full=len(o.queue_full_s),
                timed_out=len(o.timed_out_s),
                refusal_ms=_ms(o.queue_full_s),
                timeout_refusal_ms=_ms(o.timed_out_s),
                late=len(o.answered_s) - len(in_time),
                deadline_exceeded=o.deadline_exceeded,
                other_errors=o.other[:5],
                peak_rss_mb=rss.peak_mb,
                peak_rss_split_mb=rss.split_mb,
                encoder_rows=ran[USER_ENCODER],
                scorer_rows=ran[ITEM_SCORER],
                expired_executions=max(0, ran[ITEM_SCORER] - len(in_time)),
                send_lag_ms_p99=float(np.percentile(o.send_lag_s, 99)) * 1e3 if o.send_lag_s else 0.0,
                cpu_s={
                    "client": time.process_time() - cpu0,
                    "server": sum(server_cpu_seconds(server.pid).values()) - server0,
                },
                compute_ms_per_request={g: infer_ns[g] / 1e6 / max(1, ran[g]) for g in GRAPHS},
            )
            say(
                f"  {variant[:6]} {multiple}x: sent {row.sent_rps:.0f}/s, goodput {row.goodput_rps:.1f}/s, "
                f"refused {row.refused}, late {row.late}, p99 {row.p99:.0f} ms, RSS {row.peak_rss_mb:.0f} MB, "
                f"rows run for late callers {row.expired_executions}"
            )
            rows.append(row)
        admin.close()
    return cap, rows


def run_overload(repository: Path, cfg: AstroConfig, s: Settings, work: Path, say: Callable[[str], None]) -> Overload:
    """Both variants of ``repository`` under the same offered loads."""
    requests = [make_request(cfg, s.seed + i, 1, s.block_len, s.candidates) for i in range(s.requests)]
    cap, after = run_variant(repository, AFTER, None, requests, s, say)
    cap_before, before = run_variant(unbounded(repository, work / "repo-unbounded"), BEFORE, cap.rps, requests, s, say)
    return Overload(s, cap, cap_before, queue_bounds(repository), Sizing(QUEUE_WAIT_MS, SERVICE_MS), before + after)


def goals(r: Overload) -> list[Goal]:
    """Issue 19's goals at 4x against 1x, per variant."""
    out = []
    for variant in (BEFORE, AFTER):
        lv = r.at(variant)
        if 1 not in lv or 4 not in lv:
            continue
        one, four = lv[1], lv[4]
        refusal = four.refusal_ms.p99 if four.refusal_ms else 0.0
        out += [
            Goal(
                variant,
                "goodput at 4x >= 90% of 1x",
                four.goodput_rps >= 0.9 * one.goodput_rps,
                f"{four.goodput_rps:.1f} vs {one.goodput_rps:.1f} req/s",
            ),
            Goal(
                variant,
                "p99 admitted at 4x <= 2x p99 at 1x",
                four.p99 <= 2 * one.p99,
                f"{four.p99:.0f} vs {one.p99:.0f} ms",
            ),
            Goal(
                variant,
                "refusals (full queue) answered in <= 100 ms at p99",
                refusal <= 100.0,
                f"{refusal:.1f} ms over {four.queue_full} refusals",
            ),
            Goal(
                variant,
                "peak RSS at 4x <= 1.25x the peak at 1x",
                four.peak_rss_mb <= 1.25 * one.peak_rss_mb,
                f"{four.peak_rss_mb:.0f} vs {one.peak_rss_mb:.0f} MB",
            ),
            Goal(
                variant,
                "zero executions past the deadline (upper bound: scorer rows for callers without an in-time answer)",
                four.expired_executions == 0,
                f"{four.expired_executions} of {four.scorer_rows} rows",
            ),
        ]
    return out


def causes(r: Overload) -> str:
    """The measured reasons behind the after variant's figures at 4x against 1x, in one paragraph."""
    lv = r.at(AFTER)
    if 1 not in lv or 4 not in lv:
        return "no 1x and 4x levels in this run."
    one, four = lv[1], lv[4]
    compute = ""  # Triton's compute time per request, in results that have it
    if four.compute_ms_per_request and one.compute_ms_per_request:
        compute = (
            f", each costing {four.compute_ms_per_request[ITEM_SCORER]:.0f} ms of Triton's compute time against "
            f"{one.compute_ms_per_request[ITEM_SCORER]:.0f} ms at 1x (the sizing assumes "
            f"{r.sizing.service_ms[ITEM_SCORER]:g} ms)"
        )
    return (
        f"at 4x the server (tritonserver + stubs) got {four.cpu_s['server']:.1f} CPU s against "
        f"{one.cpu_s['server']:.1f} at 1x, while the load client on the same cores used "
        f"{four.cpu_s['client']:.1f} CPU s against {one.cpu_s['client']:.1f} and sent its requests up to "
        f"{four.send_lag_ms_p99:.0f} ms late (p99; every latency it measures carries that lag); item_scorer ran "
        f"{four.scorer_rows} rows against {one.scorer_rows}{compute}. user_encoder ran "
        f"{four.encoder_rows - four.scorer_rows} rows for requests that item_scorer's full queue then refused: the "
        "encoder (one instance, the faster stage) never holds a queue, so on Triton 2.51, which has no admission "
        "at the ensemble itself, a refusal comes after the encoder has run and its refusal latency includes that "
        f"run. Answers later than the deadline ({four.late} at 4x) were admitted within the bounds but served "
        "slower than the sizing's measured service time on the shared cores; the bounds count requests, and the "
        "wait they bound grows with the service time."
    )


if __name__ == "__main__":
    from bench.__main__ import section_main

    sys.exit(section_main("overload"))
