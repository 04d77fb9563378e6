"""Two model repositories served side by side, timed on the same requests: before/after of a serving fix.

    python -m bench.compare_served BASE_REPO CANDIDATE_REPO --concurrency 1,16 --rounds 5

Both servers run at once on free loopback ports (only one is sent requests at a time); each
round times one phase on each, order rotating, so load from other processes lands on both.
Reports candidate / base per round for p50 latency and throughput (median [IQR] (min–max)),
after checking that both answer request 0 identically (a speed fix must not change scores).
Used for the before/after numbers in docs/bench/report.md, "Findings and fixes".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench.cli_types import int_list
from bench.served import SERVER_PHASES, BenchError, add_delta, infer_fn, per_request_ms, run_phase, server_counters
from bench.timing import Stats, rotated
from bench.workload import make_request
from contract.tensors import ENSEMBLE
from model.checkpoint import DEFAULT_CHECKPOINT, load_config
from serve.triton_server import TritonServer

SIDES = ("base", "candidate")


def fmt(s: Stats) -> str:
    return f"{s.median:.3f} [{s.q1:.3f}–{s.q3:.3f}] ({s.min:.3f}–{s.max:.3f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare_served", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("base", type=Path, help="model repository before the change")
    p.add_argument("candidate", type=Path, help="model repository after the change")
    p.add_argument("--concurrency", type=int_list, default=[1, 16], help="client concurrencies (default 1,16)")
    p.add_argument("--rounds", type=int, default=5, help="phases per side and concurrency (default 5)")
    p.add_argument("--requests", type=int, default=64, help="requests per phase (default 64)")
    p.add_argument("--block-len", type=int, default=128, help="Tb of every request (default 128)")
    p.add_argument("--candidates", type=int, default=256, help="N of every request (default 256)")
    p.add_argument("--batch", type=int, default=1, help="users per request (default 1)")
    p.add_argument("--time-cap", type=float, default=30.0, help="seconds after which a phase starts no new request")
    p.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint whose config shapes the requests"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the requests")
    a = p.parse_args(argv)
    if min(a.rounds, a.requests, a.block_len, a.candidates, a.batch) < 1:
        p.error("--rounds, --requests, --block-len, --candidates and --batch must be >= 1")
    cfg = load_config(a.checkpoint)
    requests = [make_request(cfg, a.seed + i, a.batch, a.block_len, a.candidates) for i in range(a.requests)]
    with TritonServer(a.base) as base, TritonServer(a.candidate) as cand:
        for server in (base, cand):
            server.start(ready_models=[ENSEMBLE], timeout_s=180)
        urls = {"base": base.grpc_url, "candidate": cand.grpc_url}
        admins = {side: grpcclient.InferenceServerClient(url) for side, url in urls.items()}
        first = {side: infer_fn(url)(requests[0]) for side, url in urls.items()}
        diff = float(np.abs(first["base"] - first["candidate"]).max())
        if diff > 0:
            raise BenchError(f"the two repositories answer request 0 differently (max |diff| {diff:.3e})")
        print(f"base {a.base} vs candidate {a.candidate}: same scores on request 0", file=sys.stderr, flush=True)
        print(
            f"{'concurrency':>11}  {'base p50 ms':>11}  {'cand p50 ms':>11}  p50 cand/base{'':24}  throughput cand/base"
        )
        for c in a.concurrency:
            clients = {side: [infer_fn(url) for _ in range(c)] for side, url in urls.items()}
            for side in SIDES:
                run_phase(clients[side], requests[: min(8, len(requests))], a.time_cap)  # warm up
            p50: dict[str, list[float]] = {s: [] for s in SIDES}
            tput: dict[str, list[float]] = {s: [] for s in SIDES}
            counters: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SIDES}
            for i in range(a.rounds):
                for side in rotated(SIDES, i):
                    before = server_counters(admins[side])
                    phase = run_phase(clients[side], requests, a.time_cap)
                    add_delta(counters[side], before, server_counters(admins[side]))
                    p50[side].append(float(np.median(phase.latencies)))
                    tput[side].append(phase.throughput)
            lat = Stats.of([x / y for x, y in zip(p50["candidate"], p50["base"], strict=True)])
            thr = Stats.of([x / y for x, y in zip(tput["candidate"], tput["base"], strict=True)])
            base_ms, cand_ms = (1e3 * float(np.median(p50[s])) for s in SIDES)
            print(
                f"{c:>11}  {base_ms:>11.2f}  {cand_ms:>11.2f}  {fmt(lat):>37}  {fmt(thr)}",
                flush=True,
            )
            for side in SIDES:
                ms, batching = per_request_ms(counters[side])
                parts = "; ".join(
                    f"{model} "
                    + " ".join(f"{ph} {v[ph]:.2f}" for ph in SERVER_PHASES)
                    + f" req/exec {batching.get(model, float('nan')):.2f}"
                    for model, v in ms.items()
                )
                print(f"{'':>11}  {side} server ms/request: {parts}", flush=True)
        for admin in admins.values():
            admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
