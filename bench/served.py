"""(c) The real Triton ensemble, driven by ``perf_analyzer``, against in-process ONNX Runtime on the same requests.

A python-target model repository (Python backend running the exported ONNX graphs with ONNX
Runtime) is served by :class:`serve.triton_server.TritonServer` on free loopback ports, with the
response cache off: the in-process side has none, so both sides compute every request. At each
concurrency ``perf_analyzer`` (a C++ client, see :mod:`bench.perf_analyzer`) sends the fixed list of
distinct requests from that many synchronous clients; Triton's statistics are read before and after
(per-model queue and compute, requests per execution, cache hits and misses). The in-process side
runs the very same ONNX files and requests through :class:`export.parity.OrtPipeline` from as many
Python threads, once before and once after the served run, so the served/in-process ratio is taken
twice around it. Our Python load code stays only there, where perf_analyzer cannot go.

Bounded: each perf_analyzer run stops after its measurement windows (``PaSettings``), each in-process
phase after ``len(requests)`` requests or ``time_cap_s``; the server listens on 127.0.0.1 only and is
stopped at the end.
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient

from bench.perf_analyzer import PaLevel, PaSettings, PerfAnalyzer, run_level, write_input_data
from bench.timing import Stats, in_threads
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER, USER_KEYS, USER_MASK, USER_VALUES
from export.parity import OrtPipeline
from serve.triton_server import TritonServer

SERVER_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
CACHE_COUNTS = ("cache_hit", "cache_miss")
CACHE_ITEMSIZE = {"fp32": 4, "fp16": 2}
MATCH_ATOL = 1e-5  # served and in-process run the same ONNX file in the same ONNX Runtime


class BenchError(RuntimeError):
    """The served model does not answer like the in-process graphs: timing it would be meaningless."""


@dataclass(frozen=True)
class Phase:
    latencies: list[float]  # seconds per request, completed ones
    wall: float  # seconds from the first start to the last completion

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall


@dataclass(frozen=True)
class ServedLevel:
    cache_dtype: str
    concurrency: int
    served: PaLevel  # perf_analyzer's figures
    in_process: Stats  # seconds per request, pooled over the in-process phases
    in_process_rps: Stats  # per in-process phase
    throughput_ratio: Stats  # served / in-process requests per second, one per in-process phase
    server_ms_per_request: dict[str, dict[str, float]]  # model -> phase -> ms (Triton statistics)
    requests_per_execution: dict[str, float]  # model -> inference count / execution count (dynamic batching)
    cache: dict[str, dict[str, int]]  # model -> cache_hit / cache_miss counts during the served run
    cpu_ms_per_request: dict[
        str, float
    ]  # in_process, client, tritonserver, backend_stubs -> CPU ms (no /proc: the first two)


@dataclass(frozen=True)
class ServedVariant:
    """(c) again on a copy of the repository changed as ``config`` says."""

    config: str
    levels: list[ServedLevel]


@dataclass(frozen=True)
class PaInfo:
    version: str
    settings: PaSettings


@dataclass(frozen=True)
class Served:
    """Section (c): the workload, the bytes it moves, every level as exported and the variants."""

    batch: int
    block_len: int
    candidates: int
    requests: int
    padding: float  # share of the history slots that are padding, mean over the requests
    handoff_bytes: dict[str, dict[str, int]]  # cache dtype -> tensor -> bytes user_encoder hands item_scorer
    wire_bytes: dict[str, int]  # request / response tensor bytes
    levels: list[ServedLevel]
    perf_analyzer: PaInfo
    config: str
    variants: list[ServedVariant]
    # closed-loop callers the exported queue bounds admit (bench.variants.admitted_concurrency); 0: unbounded
    admitted_concurrency: int = 0


def group_usage(pgid: int) -> dict[str, tuple[float, float]]:
    """(CPU seconds used so far, user + system; resident MB now) of a process group, from ``/proc``: the
    ``tritonserver`` that leads it and its Python-backend stubs; empty where there is no ``/proc``."""
    if not Path("/proc").is_dir():
        return {}
    tick, page_mb = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE") / 2**20
    out = {"tritonserver": (0.0, 0.0), "backend_stubs": (0.0, 0.0)}
    for entry in Path("/proc").iterdir():
        try:  # fields after "pid (comm)": state ppid pgrp ... utime (11) stime (12) ... rss pages (21)
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
        except OSError:  # the process ended meanwhile
            continue
        if fields and int(fields[2]) == pgid:
            part = "tritonserver" if int(entry.name) == pgid else "backend_stubs"
            cpu, rss = out[part]
            out[part] = (cpu + (int(fields[11]) + int(fields[12])) / tick, rss + int(fields[21]) * page_mb)
    return out


def server_cpu_seconds(pgid: int) -> dict[str, float]:
    return {part: cpu for part, (cpu, _) in group_usage(pgid).items()}


def handoff_bytes(cfg: AstroConfig, batch: int, block_len: int, cache_dtype: str) -> dict[str, int]:
    """Bytes user_encoder hands item_scorer per request: keys + values [B, L, H, S, dh] and mask [B, S] bool."""
    s = cfg.n_blocks * block_len
    kv = batch * cfg.n_layers * cfg.n_heads * s * cfg.head_dim * CACHE_ITEMSIZE[cache_dtype]
    return {USER_KEYS: kv, USER_VALUES: kv, USER_MASK: batch * s, "total": 2 * kv + batch * s}


def wire_bytes(cfg: AstroConfig, batch: int, block_len: int, candidates: int) -> dict[str, int]:
    """Tensor bytes of one ensemble request and its response (int64 inputs, fp32 scores), before framing."""
    request = 8 * batch * (4 * cfg.n_blocks * block_len + 2 + candidates)
    return {"request": request, "response": 4 * batch * candidates * cfg.n_tasks}


def run_phase(
    workers: Sequence[Callable[[RequestBatch], object]], requests: Sequence[RequestBatch], cap: float
) -> Phase:
    """Send ``requests`` from ``len(workers)`` threads (worker i calls ``workers[i]``), each taking the next one."""
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    errors: list[BaseException] = []
    deadline = time.perf_counter() + cap

    def loop(call: Callable[[RequestBatch], object]) -> None:
        nonlocal next_index
        while True:
            with lock:
                if next_index >= len(requests) or time.perf_counter() > deadline or errors:
                    return
                req = requests[next_index]
                next_index += 1
            t0 = time.perf_counter()
            try:
                call(req)
            except Exception as e:  # re-raised in the caller's thread below
                with lock:
                    errors.append(e)
                return
            t1 = time.perf_counter()
            with lock:
                latencies.append(t1 - t0)

    wall = in_threads([partial(loop, w) for w in workers])
    if errors:
        raise errors[0]
    return Phase(latencies, wall)


def infer_fn(url: str) -> Callable[[RequestBatch], npt.NDArray[np.float32]]:
    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(SCORES_OUTPUT)]

    def infer(req: RequestBatch) -> npt.NDArray[np.float32]:
        inputs = []
        for name, arr in req.as_dict().items():
            inp = grpcclient.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        scores: npt.NDArray[np.float32] = client.infer(ENSEMBLE, inputs, outputs=outputs).as_numpy(SCORES_OUTPUT)
        return scores

    return infer


def server_counters(client: Any) -> dict[str, dict[str, int]]:
    """model -> cumulative counters from Triton's statistics (ns per phase, inference, execution, cache counts)."""
    stats = client.get_inference_statistics(as_json=True)
    out: dict[str, dict[str, int]] = {}
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})
        c = {p: int(inf.get(p, {}).get("ns", 0)) for p in SERVER_PHASES}
        c["success"] = int(inf.get("success", {}).get("count", 0))
        c["inference_count"] = int(m.get("inference_count", 0))
        c["execution_count"] = int(m.get("execution_count", 0))
        for k in CACHE_COUNTS:
            c[k] = int(inf.get(k, {}).get("count", 0))
        out[m["name"]] = c
    return out


def add_delta(
    total: dict[str, dict[str, int]], before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> None:
    """total[model][counter] += after - before."""
    for model, values in after.items():
        acc = total.setdefault(model, dict.fromkeys(values, 0))
        for k, v in values.items():
            acc[k] += v - before.get(model, {}).get(k, 0)


def per_request_ms(counters: dict[str, dict[str, int]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(model -> phase -> ms per request, model -> requests per execution) from summed counters.

    A cache hit is a success that ran nothing: the phases are averaged over the requests that ran."""
    per_request: dict[str, dict[str, float]] = {}
    batching: dict[str, float] = {}
    for name in (ENSEMBLE, USER_ENCODER, ITEM_SCORER):
        c = counters.get(name, {})
        ran = c.get("success", 0) - c.get("cache_hit", 0)
        if ran <= 0:
            continue
        per_request[name] = {p: c[p] / ran / 1e6 for p in SERVER_PHASES}
        if c.get("execution_count", 0) > 0:
            batching[name] = c["inference_count"] / c["execution_count"]
    return per_request, batching


def cache_counts(counters: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """model -> {cache_hit, cache_miss} of the composing models."""
    return {m: {k: counters.get(m, {}).get(k, 0) for k in CACHE_COUNTS} for m in (USER_ENCODER, ITEM_SCORER)}


def check_same_answers(
    served: Callable[[RequestBatch], npt.NDArray[np.float32]],
    local: Callable[[RequestBatch], npt.NDArray[np.float32]],
    req: RequestBatch,
) -> float:
    """Max |served - in-process| on one request; raises :class:`BenchError` beyond ``MATCH_ATOL``."""
    a, b = served(req), local(req)
    if a.shape != b.shape:
        raise BenchError(f"served scores {list(a.shape)} vs in-process {list(b.shape)}")
    diff = float(np.abs(a - b).max())
    if diff > MATCH_ATOL:
        raise BenchError(f"served scores differ from in-process ONNX Runtime by {diff:.3e} > {MATCH_ATOL}")
    return diff


def children_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far: the perf_analyzer runs."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_served(
    repository: Path,
    cache_dtype: str,
    local: OrtPipeline,
    requests: Sequence[RequestBatch],
    concurrencies: Sequence[int],
    pa: PerfAnalyzer,
    settings: PaSettings,
    time_cap_s: float,
    progress: Callable[[str], None],
) -> tuple[list[ServedLevel], str]:
    """Serve ``repository`` (no response cache), measure both sides at each concurrency; returns the levels and
    Triton's version."""
    with TritonServer(repository) as server, tempfile.TemporaryDirectory(prefix="astro-pa-") as tmp:
        work = Path(tmp)
        data = write_input_data(requests, work / "requests.json")
        t0 = time.perf_counter()
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        progress(f"  tritonserver ready in {time.perf_counter() - t0:.1f} s at {server.grpc_url} ({cache_dtype} cache)")
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        server_pid = server.pid
        assert server_pid is not None, "a started server has a process id"
        version = str(admin.get_server_metadata(as_json=True).get("version", "unknown"))
        diff = check_same_answers(infer_fn(server.grpc_url), local, requests[0])
        progress(f"  served == in-process on request 0 (max |diff| {diff:.1e})")
        for r in requests[: min(4, len(requests))]:  # warm the in-process sessions and allocator
            local(r)
        levels = []
        for c in concurrencies:
            in_process_cpu = time.process_time()
            phases = [run_phase([local] * c, requests, time_cap_s)]
            in_process_cpu = time.process_time() - in_process_cpu
            cpu_before = children_cpu_seconds(), server_cpu_seconds(server_pid)
            before = server_counters(admin)
            served = run_level(pa, server.grpc_url, ENSEMBLE, data, c, settings, work)
            counters: dict[str, dict[str, int]] = {}
            add_delta(counters, before, server_counters(admin))
            client_cpu = children_cpu_seconds() - cpu_before[0]
            server_cpu = {k: v - cpu_before[1].get(k, 0.0) for k, v in server_cpu_seconds(server_pid).items()}
            t_cpu = time.process_time()
            phases.append(run_phase([local] * c, requests, time_cap_s))
            in_process_cpu += time.process_time() - t_cpu
            per_request, batching = per_request_ms(counters)
            done = max(counters.get(ENSEMBLE, {}).get("success", 0), 1)
            local_done = sum(len(p.latencies) for p in phases)
            cpu = {"in_process": 1e3 * in_process_cpu / local_done, "client": 1e3 * client_cpu / done}
            cpu.update({part: 1e3 * sec / done for part, sec in server_cpu.items()})
            rps = [p.throughput for p in phases]
            level = ServedLevel(
                cache_dtype=cache_dtype,
                concurrency=c,
                served=served,
                in_process=Stats.of([x for p in phases for x in p.latencies]),
                in_process_rps=Stats.of(rps),
                throughput_ratio=Stats.of([served.throughput_rps / x for x in rps]),
                server_ms_per_request=per_request,
                requests_per_execution=batching,
                cache=cache_counts(counters),
                cpu_ms_per_request=cpu,
            )
            levels.append(level)
            progress(
                f"  concurrency {c} ({cache_dtype}): perf_analyzer {served.throughput_rps:.1f} req/s, p50 "
                f"{served.latency_us['p50'] / 1e3:.2f} ms, p99 {served.latency_us['p99'] / 1e3:.2f} ms"
                f"{'' if served.stable else ' (unstable)'}; in-process {np.median(rps):.1f} req/s, p50 "
                f"{1e3 * level.in_process.median:.2f} ms; served/in-process {level.throughput_ratio.median:.2f}"
            )
        admin.close()
    return levels, version
