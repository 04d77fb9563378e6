"""Overload: offered load at 1x, 2x, 4x, 8x the measured capacity, without and with the queue bounds.

    python -m bench.overload                 # -> docs/bench/overload.json and overload.md (about 3 min)
    python -m bench.overload --quick         # smoke run into a temp folder

One ``python -m export --target python`` repository is served twice by the ``tritonserver`` of the
nvidia-pytriton wheel (response cache off, so every request computes): **before**, its composing models'
queue policy removed (Triton's default: unbounded queues, no timeout), and **after**, as exported
(contract/admission.py). Capacity is the throughput of a closed loop of ``--capacity-concurrency``
callers on the *after* server; both servers then get the same open-loop load (Poisson arrivals, seeded)
at each multiple of it, from one asyncio ``tritonclient.grpc.aio`` client (perf_analyzer sends no
per-request timeout and stops at the first refusal, so it cannot drive this). Each request carries the
caller's deadline as Triton's per-request ``timeout``; an answer after the deadline counts as late. Its
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

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from bench.served import Percentiles, infer_fn, server_counters, server_cpu_seconds
from bench.workload import make_request
from contract.admission import QUEUE_WAIT_MS, SERVICE_MS
from contract.config import AstroConfig
from contract.model_config import read_model_config
from contract.tensors import ENSEMBLE, GRAPHS, ITEM_SCORER, USER_ENCODER
from export.repository import write_config
from model.checkpoint import DEFAULT_CHECKPOINT
from model.checkpoint import load_config as load_model_config
from model.random_inputs import RandomRequest
from serve.triton_server import TritonServer

ROOT = Path(__file__).resolve().parent.parent
MULTIPLES = (1, 2, 4, 8)
BEFORE, AFTER = "before: unbounded queues", "after: bounded queues (as exported)"
QUEUE_FULL, TIMED_OUT = "Exceeds maximum queue size", "Request timeout expired"
CALL_TIMEOUT_S = 120.0  # gRPC deadline of each call: long, so that no call is cancelled in flight (above)


@dataclass(frozen=True)
class Settings:
    multiples: tuple[int, ...] = MULTIPLES
    seconds: float = 6.0  # open-loop duration per level
    capacity_seconds: float = 6.0
    capacity_concurrency: int = 8  # callers of the closed loop that measures the capacity
    warm_seconds: float = 2.0  # WARM_CALLERS callers before it, uncounted
    deadline_ms: float = 250.0  # the caller's deadline: a few times p99 at capacity, as a ranking call's budget
    requests: int = 64  # distinct requests cycled through (B=1, Tb=48, N=256: the sizing's typical request)
    block_len: int = 48
    candidates: int = 256
    seed: int = 0


QUICK = Settings(multiples=(1, 4), seconds=1.0, capacity_seconds=1.0, warm_seconds=0.3, requests=8)
WARM_CALLERS = 16  # the small config's max_batch_size: the dynamic batcher can form its largest batches


def unbounded(repository: Path, out: Path) -> Path:
    """A copy of ``repository`` whose composing models have Triton's default queue: no size, no timeout."""
    shutil.copytree(repository, out, dirs_exist_ok=True)
    for graph in GRAPHS:
        config = read_model_config(out / graph / "config.pbtxt")
        config.dynamic_batching.ClearField("default_queue_policy")
        write_config(out / graph / "config.pbtxt", config)
    return out


def group_rss_mb(pgid: int) -> dict[str, float]:
    """Resident memory of a process group, MB, from ``/proc``: ``tritonserver`` (the leader) and its stubs."""
    out = {"tritonserver": 0.0, "backend_stubs": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = (entry / "status").read_text()
        except OSError:  # ended meanwhile
            continue
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        out["tritonserver" if int(entry.name) == pgid else "backend_stubs"] += kb / 1024
    return out


class PeakRss:
    """The largest total ``group_rss_mb`` seen while the ``with`` block runs (sampled every 50 ms), and its split."""

    def __init__(self, pgid: int) -> None:
        self.pgid, self.peak_mb, self.split_mb = pgid, 0.0, {"tritonserver": 0.0, "backend_stubs": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = group_rss_mb(self.pgid)
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


async def open_loop(url: str, requests: Sequence[RandomRequest], rate: float, s: Settings) -> Outcomes:
    """Poisson arrivals at ``rate`` per second for ``s.seconds``, each request with the caller's deadline."""
    rng = np.random.default_rng(s.seed)
    deadline_s = s.deadline_ms / 1e3
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
                await client.infer(ENSEMBLE, inputs, timeout=int(deadline_s * 1e6), client_timeout=CALL_TIMEOUT_S)
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


def level_row(
    variant: str,
    multiple: int,
    rate: float,
    o: Outcomes,
    rss_mb: float,
    ran: dict[str, int],
    cpu_s: dict[str, float],
    s: Settings,
) -> dict[str, Any]:
    in_time = [t for t in o.answered_s if t <= s.deadline_ms / 1e3]
    return {
        "variant": variant,
        "multiple": multiple,
        "offered_rps": rate,
        "sent_rps": o.sent / o.seconds,
        "sent": o.sent,
        "answered": len(o.answered_s),
        "goodput_rps": len(in_time) / o.seconds,
        "admitted_ms": asdict(Percentiles.of([t * 1e3 for t in o.answered_s])) if o.answered_s else None,
        "refused": len(o.queue_full_s) + len(o.timed_out_s),
        "queue_full": len(o.queue_full_s),
        "timed_out": len(o.timed_out_s),
        # a full queue refuses at once: its latency is the goal's; a timeout refusal waited its timeout by design
        "refusal_ms": asdict(Percentiles.of([t * 1e3 for t in o.queue_full_s])) if o.queue_full_s else None,
        "timeout_refusal_ms": asdict(Percentiles.of([t * 1e3 for t in o.timed_out_s])) if o.timed_out_s else None,
        "late": len(o.answered_s) - len(in_time),
        "deadline_exceeded": o.deadline_exceeded,
        "other_errors": o.other[:5],
        "peak_rss_mb": rss_mb,
        "encoder_rows": ran[USER_ENCODER],
        "scorer_rows": ran[ITEM_SCORER],
        # item_scorer rows run for callers that got no answer within their deadline (late or never)
        "expired_executions": max(0, ran[ITEM_SCORER] - len(in_time)),
        # the client's own delay in sending (its event loop busy): it inflates every latency measured here
        "send_lag_ms_p99": float(np.percentile(o.send_lag_s, 99)) * 1e3 if o.send_lag_s else 0.0,
        "cpu_s": cpu_s,  # the load client's and the server's (tritonserver + stubs) CPU seconds in this level
    }


def closed_loop(url: str, requests: Sequence[RandomRequest], callers: int, seconds: float) -> dict[str, Any]:
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

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latency = asdict(Percentiles.of([t * 1e3 for t in answered])) if answered else None
    return {"rps": len(answered) / wall, "latency_ms": latency, "refused": refused, "callers": callers}


def capacity(url: str, requests: Sequence[RandomRequest], s: Settings) -> dict[str, Any]:
    """The closed loop of ``s.capacity_concurrency`` callers, after an uncounted one of ``WARM_CALLERS`` that warms
    the instances at large dynamic batches (their peak working memory)."""
    closed_loop(url, requests, WARM_CALLERS, s.warm_seconds)
    return closed_loop(url, requests, s.capacity_concurrency, s.capacity_seconds)


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
    requests: Sequence[RandomRequest],
    s: Settings,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Serve ``repository``; measure its capacity (which also warms it at large dynamic batches), then offer
    every multiple of ``rate_1x`` (this capacity when None)."""
    with TritonServer(repository) as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        assert server.pid is not None, "a started server has a process id"
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        cap = capacity(server.grpc_url, requests, s)
        say(
            f"  {variant}: capacity {cap['rps']:.1f} req/s (closed loop of {s.capacity_concurrency}), p99 "
            f"{cap['latency_ms']['p99']:.1f} ms"
        )
        rate = float(cap["rps"]) if rate_1x is None else rate_1x
        rows = []
        for multiple in s.multiples:
            before = wait_idle(admin)
            cpu0, server0 = time.process_time(), sum(server_cpu_seconds(server.pid).values())
            with PeakRss(server.pid) as rss:
                outcomes = asyncio.run(open_loop(server.grpc_url, requests, multiple * rate, s))
                after = wait_idle(admin)
            ran = {g: after[g]["inference_count"] - before[g]["inference_count"] for g in GRAPHS}
            # Triton's compute time per request (a batch's time counts for each of its requests): what one
            # request cost while the instances shared the cores with everything else
            infer_ns = {g: after[g]["compute_infer"] - before[g]["compute_infer"] for g in GRAPHS}
            cpu = {
                "client": time.process_time() - cpu0,
                "server": sum(server_cpu_seconds(server.pid).values()) - server0,
            }
            row = level_row(variant, multiple, multiple * rate, outcomes, rss.peak_mb, ran, cpu, s)
            row["peak_rss_split_mb"] = rss.split_mb
            row["compute_ms_per_request"] = {g: infer_ns[g] / 1e6 / max(1, ran[g]) for g in GRAPHS}
            say(
                f"  {variant[:6]} {multiple}x: sent {row['sent_rps']:.0f}/s, goodput {row['goodput_rps']:.1f}/s, "
                f"refused {row['refused']}, late {row['late']}, p99 "
                f"{(row['admitted_ms'] or {}).get('p99', float('nan')):.0f} ms, RSS {row['peak_rss_mb']:.0f} MB, "
                f"rows run for late callers {row['expired_executions']}"
            )
            rows.append(row)
        admin.close()
    return cap, rows


def run_overload(
    repository: Path, cfg: AstroConfig, s: Settings, work: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Both variants of ``repository`` under the same offered loads; the results section of the report."""
    requests = [make_request(cfg, s.seed + i, 1, s.block_len, s.candidates) for i in range(s.requests)]
    cap, after = run_variant(repository, AFTER, None, requests, s, say)
    cap_before, before = run_variant(
        unbounded(repository, work / "repo-unbounded"), BEFORE, cap["rps"], requests, s, say
    )
    bounds = {
        g: read_model_config(repository / g / "config.pbtxt").dynamic_batching.default_queue_policy for g in GRAPHS
    }
    return {
        "settings": asdict(s),
        "capacity": cap,
        "capacity_before": cap_before,
        "bounds": {
            g: {
                "max_queue_size": p.max_queue_size,
                "timeout_us": p.default_timeout_microseconds,
                "instances": read_model_config(repository / g / "config.pbtxt").instance_group[0].count,
            }
            for g, p in bounds.items()
        },
        "sizing": {"queue_wait_ms": QUEUE_WAIT_MS, "service_ms": SERVICE_MS},
        "levels": before + after,
    }


def _p99(row: dict[str, Any]) -> float:
    p99: float = (row["admitted_ms"] or {}).get("p99", float("inf"))
    return p99


def goals(r: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    """(variant, goal, met, measured) for issue 19's goals at 4x against 1x."""
    out = []
    for variant in (BEFORE, AFTER):
        lv = {row["multiple"]: row for row in r["levels"] if row["variant"] == variant}
        if 1 not in lv or 4 not in lv:
            continue
        one, four = lv[1], lv[4]
        refusal = (four["refusal_ms"] or {}).get("p99", 0.0)
        out += [
            (
                variant,
                "goodput at 4x >= 90% of 1x",
                four["goodput_rps"] >= 0.9 * one["goodput_rps"],
                f"{four['goodput_rps']:.1f} vs {one['goodput_rps']:.1f} req/s",
            ),
            (
                variant,
                "p99 admitted at 4x <= 2x p99 at 1x",
                _p99(four) <= 2 * _p99(one),
                f"{_p99(four):.0f} vs {_p99(one):.0f} ms",
            ),
            (
                variant,
                "refusals (full queue) answered in <= 100 ms at p99",
                refusal <= 100.0,
                f"{refusal:.1f} ms over {four['queue_full']} refusals",
            ),
            (
                variant,
                "peak RSS at 4x <= 1.25x the peak at 1x",
                four["peak_rss_mb"] <= 1.25 * one["peak_rss_mb"],
                f"{four['peak_rss_mb']:.0f} vs {one['peak_rss_mb']:.0f} MB",
            ),
            (
                variant,
                "zero executions past the deadline (upper bound: scorer rows for callers without an in-time answer)",
                four["expired_executions"] == 0,
                f"{four['expired_executions']} of {four['scorer_rows']} rows",
            ),
        ]
    return out


def render(r: dict[str, Any]) -> str:
    """The overload section of the report (markdown), from the results alone."""
    s, cap = r["settings"], r["capacity"]
    bounds = ", ".join(
        f"{g} {b['max_queue_size']} queued on {b['instances']} instance(s), {b['timeout_us'] / 1e6:g} s"
        for g, b in r["bounds"].items()
    )
    head = [
        "variant",
        "load",
        "offered / sent req/s",
        "goodput req/s",
        "answered p50 / p99 ms",
        "refused (full / timeout)",
        "full-queue refusal p99 ms",
        "answered late / never",
        "peak RSS MB",
        "rows run encoder / scorer",
        "scorer rows for callers without an in-time answer",
        "CPU s client / server",
        "client send lag p99 ms",
    ]
    rows = []
    for lv in r["levels"]:
        adm, ref = lv["admitted_ms"] or {}, lv["refusal_ms"] or {}
        rows.append([
            lv["variant"], f"{lv['multiple']}x", f"{lv['offered_rps']:.0f} / {lv['sent_rps']:.0f}",
            f"{lv['goodput_rps']:.1f}", f"{adm.get('p50', float('nan')):.0f} / {adm.get('p99', float('nan')):.0f}",
            f"{lv['refused']} ({lv['queue_full']} / {lv['timed_out']})", f"{ref.get('p99', float('nan')):.1f}",
            f"{lv['late']} / {lv['deadline_exceeded']}", f"{lv['peak_rss_mb']:.0f}",
            f"{lv['encoder_rows']} / {lv['scorer_rows']}",
            str(lv["expired_executions"]), f"{lv['cpu_s']['client']:.1f} / {lv['cpu_s']['server']:.1f}",
            f"{lv['send_lag_ms_p99']:.0f}",
        ])  # fmt: skip
    table = "\n".join("| " + " | ".join(x) + " |" for x in [head, ["---"] * len(head), *rows])
    goal_rows = "\n".join(f"| {v} | {g} | {'met' if ok else '**missed**'} | {m} |" for v, g, ok, m in goals(r))
    return "\n\n".join(
        [
            f"Requests: B = 1, Tb = {s['block_len']}, N = {s['candidates']} ({s['requests']} distinct, response cache "
            f"off), deadline {s['deadline_ms']:g} ms sent as Triton's per-request timeout (the gRPC deadline "
            f"kept at {CALL_TIMEOUT_S:g} s: Triton 2.51 crashes when thousands of calls are cancelled in flight). "
            f"Capacity (closed loop of {s['capacity_concurrency']}, after): {cap['rps']:.1f} req/s, p50/p99 "
            f"{cap['latency_ms']['p50']:.1f}/{cap['latency_ms']['p99']:.1f} ms, {cap['refused']} refused (before: "
            f"{r['capacity_before']['rps']:.1f} req/s); both variants get the same offered loads. Bounds: {bounds} "
            f"(sizing: {r['sizing']['queue_wait_ms']:g} ms of measured service time per instance). "
            f"{s['seconds']:g} s per level, Poisson arrivals; after each level the server is left to finish what it "
            "holds, and that work is counted in the level.",
            table,
            "| variant | goal (issue 19) | | measured |\n|---|---|---|---|\n" + goal_rows,
            "Where the time went (from the table): " + causes(r),
        ]
    )


def causes(r: dict[str, Any]) -> str:
    """The measured reasons behind the after variant's figures at 4x against 1x, in one paragraph."""
    lv = {row["multiple"]: row for row in r["levels"] if row["variant"] == AFTER}
    if 1 not in lv or 4 not in lv:
        return "no 1x and 4x levels in this run."
    one, four = lv[1], lv[4]
    wasted = four["encoder_rows"] - four["scorer_rows"]
    assumed = r["sizing"]["service_ms"][ITEM_SCORER]
    compute = ""  # Triton's compute time per request, in results that have it
    if "compute_ms_per_request" in four and "compute_ms_per_request" in one:
        compute = (
            f", each costing {four['compute_ms_per_request'][ITEM_SCORER]:.0f} ms of Triton's compute time against "
            f"{one['compute_ms_per_request'][ITEM_SCORER]:.0f} ms at 1x (the sizing assumes {assumed:g} ms)"
        )

    return (
        f"at 4x the server (tritonserver + stubs) got {four['cpu_s']['server']:.1f} CPU s against "
        f"{one['cpu_s']['server']:.1f} at 1x, while the load client on the same cores used "
        f"{four['cpu_s']['client']:.1f} CPU s against {one['cpu_s']['client']:.1f} and sent its requests up to "
        f"{four['send_lag_ms_p99']:.0f} ms late (p99; every latency it measures carries that lag); item_scorer ran "
        f"{four['scorer_rows']} rows against {one['scorer_rows']}{compute}. user_encoder ran {wasted} rows for "
        "requests that item_scorer's full queue then refused: the encoder (one instance, the faster stage) never holds "
        "a queue, so on Triton 2.51, which has no admission at the ensemble itself, a refusal comes after the "
        "encoder has run and its refusal latency includes that run. Answers later than the deadline "
        f"({four['late']} at 4x) were admitted within the bounds but served slower than the sizing's "
        "measured service time on the shared cores; the bounds count requests, and the wait they bound grows "
        "with the service time."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1x and 4x, 1 s each")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where overload.json and overload.md go (default docs/bench; with --quick a temp folder)",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="serve this python-target repository (default: export the default checkpoint into a temp folder)",
    )
    p.add_argument("--deadline-ms", type=float, default=None, help="the callers' deadline (default 250)")
    p.add_argument("--from-results", type=Path, default=None, help="measure nothing: re-render from overload.json")
    a = p.parse_args(argv)
    s = QUICK if a.quick else Settings()
    if a.deadline_ms is not None:
        s = Settings(**{**asdict(s), "deadline_ms": a.deadline_ms})
    out = a.out or (Path(tempfile.gettempdir()) / "astro-bench-overload" if a.quick else ROOT / "docs" / "bench")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from export.__main__ import main as export_main  # the exporter pulls torch in: only when it runs

    if a.from_results is not None:
        results = json.loads(a.from_results.read_text())
        write(results, out)
        return 0
    with tempfile.TemporaryDirectory(prefix="astro-overload-") as tmp:
        work = Path(tmp)
        repository = a.repository
        if repository is None:
            repository = work / "repo"
            if (
                export_main(
                    ["--target", "python", "--out", str(repository), "--work-dir", str(work / "onnx"), "--skip-parity"]
                )
                != 0
            ):
                raise SystemExit("bench.overload: python -m export failed")
        cfg = load_model_config(DEFAULT_CHECKPOINT)
        results = run_overload(repository, cfg, s, work, say)
    results["command"] = " ".join(["python -m bench.overload", *(argv if argv is not None else sys.argv[1:])])
    write(results, out)
    return 0


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overload.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    header = f"# Overload\n\nGenerated by `{results['command']}` from `overload.json`; do not edit by hand.\n\n"
    (out / "overload.md").write_text(header + text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
