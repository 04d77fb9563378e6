"""Triton's ``perf_analyzer`` against the served ensemble: finding it, its input data, one run per level.

The binary is the one the ``tritonclient==2.51.0`` wheel ships (the server's version), installed beside
the project's own ``tritonclient`` by ``make bench-tools`` (which ``make bench`` runs first): ``pip install
--no-deps --target <venv>/opt/tritonclient-2.51.0``, so the client library the project imports stays
whatever ``pyproject.toml`` resolves. It needs two shared libraries: ``libb64.so.0d`` (Debian's
``libb64-0d``, which the same target installs as root) and ``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12``
wheel of the ``bench`` extra, put on ``LD_LIBRARY_PATH``; no GPU is needed). :func:`locate` installs
nothing: it finds them, or raises :class:`ToolMissing` naming what is missing and the target that installs it.

perf_analyzer replaces our Python load generator for the served side: it is a C++ client, so it
takes little of the CPU it measures. Requests come from an ``--input-data`` JSON written from our
own request lists; perf_analyzer's thread ``t`` of ``c`` sends entries ``t, t + c, t + 2c, ...``
in turn (its step id per thread starts at the thread's index and advances by the thread count),
which :func:`lanes_to_steps` uses to give each simulated client its own ordered stream.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from contract.request_batch import RequestBatch

PA_VERSION = "2.51.0"  # the nvidia-pytriton server's Triton version
PA_TARGET = Path(sys.prefix) / "opt" / f"tritonclient-{PA_VERSION}"
LIBCUDART = "libcudart.so.12"
INSTALL = "make bench-tools"  # the Makefile target that installs what locate() looks for
CSV_LATENCIES = {"p50": "p50 latency", "p90": "p90 latency", "p95": "p95 latency", "p99": "p99 latency"}


class ToolMissing(RuntimeError):
    """perf_analyzer or a library it needs is missing; the message says which and how to install it."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str] = field(repr=False)
    version: str = ""

    def run(self, args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )


def _binary() -> Path | None:
    for candidate in (os.environ.get("ASTRO_PERF_ANALYZER", ""), str(PA_TARGET / "bin" / "perf_analyzer")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _cudart_dir() -> Path | None:
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    roots = spec.submodule_search_locations if spec is not None else None
    return next((Path(r) / "lib" for r in roots or [] if (Path(r) / "lib" / LIBCUDART).is_file()), None)


def locate() -> PerfAnalyzer:
    """perf_analyzer ready to run (``LD_LIBRARY_PATH`` set for libcudart); :class:`ToolMissing` naming what is
    missing otherwise."""
    binary = _binary()
    if binary is None:
        raise ToolMissing(
            f"no perf_analyzer {PA_VERSION} at {PA_TARGET}/bin: run `{INSTALL}` (or point ASTRO_PERF_ANALYZER at one)"
        )
    env = dict(os.environ)
    cudart = _cudart_dir()
    if cudart is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    ldd = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, check=False).stdout
    missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
    if missing:
        raise ToolMissing(f"{binary} cannot find {', '.join(missing)}: run `{INSTALL}` (see `ldd {binary}`)")
    probe = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, check=False)
    found = re.search(r"Version (\S+)", probe.stdout + probe.stderr)
    if probe.returncode != 0 or found is None:
        raise ToolMissing(f"{binary} --version failed ({probe.returncode}): {(probe.stdout + probe.stderr)[-400:]}")
    return PerfAnalyzer(binary, env, found.group(1))


# ---- input data -------------------------------------------------------------------------------


def lanes_to_steps(lanes: Sequence[Sequence[RequestBatch]]) -> list[RequestBatch]:
    """Interleave per-client streams so that perf_analyzer's thread ``t`` of ``len(lanes)`` sends ``lanes[t]`` in
    order (entries ``t, t + c, ...``). Lanes must be equally long."""
    if len({len(lane) for lane in lanes}) != 1:
        raise ValueError(f"lanes must be equally long, got {[len(lane) for lane in lanes]}")
    return [lane[j] for j in range(len(lanes[0])) for lane in lanes]


def write_input_data(requests: Sequence[RequestBatch], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: one step per request, each input's content and shape (batch axis
    dropped: the requests must have batch 1, which perf_analyzer's ``-b 1`` adds back)."""
    steps = []
    for r in requests:
        step: dict[str, Any] = {}
        for name, arr in r.as_dict().items():
            if arr.shape[0] != 1:
                raise ValueError(f"{name}: perf_analyzer input data takes batch-1 requests, got {list(arr.shape)}")
            step[name] = {"content": arr.reshape(-1).tolist(), "shape": list(arr.shape[1:])}
        steps.append(step)
    path.write_text(json.dumps({"data": steps}, separators=(",", ":")))
    return path


# ---- one measurement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PaSettings:
    """How perf_analyzer measures: windows of ``interval_ms`` (or ``request_count`` requests each), until
    three in a row agree within ``stability_pct`` or ``max_trials`` windows were taken; or exactly
    ``total_requests`` requests, measured as one."""

    interval_ms: int = 2000
    max_trials: int = 6
    stability_pct: int = 15
    request_count: int = 0  # > 0: count windows of this many requests instead of time windows
    total_requests: int = 0  # > 0: send exactly this many requests and measure over them (no windows)
    timeout_s: float = 300.0

    def args(self) -> list[str]:
        if self.total_requests > 0:
            return ["--request-count", str(self.total_requests)]
        mode = (
            ["--measurement-mode", "count_windows", "--measurement-request-count", str(self.request_count)]
            if self.request_count > 0
            else ["--measurement-interval", str(self.interval_ms)]
        )
        return [*mode, "--max-trials", str(self.max_trials), "--stability-percentage", str(self.stability_pct)]


@dataclass(frozen=True)
class PaLevel:
    """perf_analyzer's figures for one concurrency (the last, stable or not, measurement window set)."""

    concurrency: int
    throughput_rps: float
    latency_us: dict[str, float]  # p50, p90, p95, p99, avg: client side, per request
    client_us: dict[str, float]  # client send, network + server send/recv, client recv
    stable: bool
    command: str


def run_level(
    pa: PerfAnalyzer,
    url: str,
    model: str,
    data: Path,
    concurrency: int,
    settings: PaSettings,
    work: Path,
) -> PaLevel:
    """One perf_analyzer run at ``concurrency`` (gRPC, batch 1, synchronous clients, one per thread). Where
    three windows in a row never agree within ``settings.stability_pct``, it is run once more accepting any
    three windows, and the level is marked unstable."""
    out_csv = work / f"pa-{model}-c{concurrency}.csv"
    args = ["-m", model, "-i", "grpc", "-u", url, "-b", "1", "--input-data", str(data)]
    args += ["--concurrency-range", f"{concurrency}:{concurrency}", "-f", str(out_csv), "--verbose-csv"]
    stable = True
    for attempt in (settings, replace(settings, stability_pct=1000)):
        out_csv.unlink(missing_ok=True)
        done = pa.run([*args, *attempt.args()], settings.timeout_s)
        text = done.stdout + done.stderr
        if done.returncode == 0 and out_csv.is_file():
            break
        stable = False
        if "Failed to obtain stable measurement" not in text:
            break
    if not out_csv.is_file():
        raise RuntimeError(f"perf_analyzer failed (exit {done.returncode}): {text[-2000:]}")
    with out_csv.open() as f:
        row = next(csv.DictReader(f))
    return PaLevel(
        concurrency=concurrency,
        throughput_rps=float(row["Inferences/Second"]),
        latency_us={
            **{k: float(row[col]) for k, col in CSV_LATENCIES.items()},
            "avg": float(row["Avg latency"]),
        },
        client_us={
            "send": float(row["Client Send"]),
            "network_server": float(row["Network+Server Send/Recv"]),
            "recv": float(row["Client Recv"]),
        },
        stable=stable,
        command=" ".join(["perf_analyzer", *args, *settings.args()]),
    )
