"""``python -m bench`` (``make bench``): TURBO breakdown, runtimes, served Triton, FLOP limit, GPU.

    python -m bench                # the full run (about 10 min on 2 CPU cores) -> docs/bench/
    python -m bench --quick        # smoke run (about 1 min), written to a temp folder unless --out
    python -m bench --threads 2    # another thread count for torch, ONNX Runtime and the served models

Needs perf_analyzer (from the tritonclient==2.51.0 wheel), libb64-0d and libcudart.so.12: installed on first
use where possible (pip; apt-get as root), otherwise the run stops at once and says exactly what is missing.

Sections (docs/bench/report.md explains each):
  (a) per-pair vs SUMI vs split, in-process PyTorch, the trained small checkpoint;
  (b) the split graphs in PyTorch eager vs ONNX Runtime, fp32 and fp16 keys/values cache;
  (c) the Triton ensemble (python target) driven by perf_analyzer vs in-process ONNX Runtime, same requests;
  (d) FLOPs per graph from the config against torch.matmul's measured rate;
  (e) (a) and the PyTorch half of (b) on a CUDA GPU, where PyTorch sees one;
  (f) session traffic (Zipf users, k requests per session) with Triton's response cache off and on;
  (g) training samples/s in SUMI rows vs one (user, item) per row, same model (the paper's 5.15x);
  overload: 1x..8x the measured capacity, queues unbounded vs bounded as exported (bench/overload.py).
  (h) the session traffic of (f) against 1, 2, 3 local replicas, round_robin vs affinity, and a kill run.
Every ratio is taken inside one round of one run and reported as median and spread over rounds.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench import block_attention, machine, op_profile, overload, plots, report
from bench.cli_types import int_list
from bench.perf_analyzer import PaSettings, PerfAnalyzer, ToolMissing, locate
from bench.replicas import run_replicas
from bench.report import GOAL_CONCURRENCY
from bench.roofline import SERVED_GOAL_MIN_CONCURRENCY, config_of, efficiency_rows, matmul_rate
from bench.runtimes import run_runtimes
from bench.served import handoff_bytes, run_served, wire_bytes
from bench.sessions import SessionModel, run_sessions
from bench.training import run_training
from bench.turbo import device_sync, run_turbo
from bench.workload import make_request, padding_fraction
from contract.config import AstroConfig
from contract.model_config import read_model_config
from contract.program import program_name
from contract.tensors import CACHE_DTYPES, ITEM_SCORER, USER_ENCODER
from export.__main__ import main as export_main
from export.parity import OrtPipeline, load_graph_paths
from export.repository import write_config
from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "bench"
AS_EXPORTED = "as exported: item_scorer on 2 instances, user_encoder on 1 taking one request per execution"
ENCODER_MERGING = "before: user_encoder merges requests that arrive together"  # (c)'s second variant
BASELINE = "ort_fp32_before"  # the --baseline-onnx graphs' runtime name
PROFILED_MIN_N = 256  # (d)'s per-operator profile: the N of (b) from here up (the largest one if none)
SCORER1 = "before: item_scorer on 1 instance"  # the repository variant (c) and (f) also run on
FINDINGS = Path(__file__).resolve().parent / "findings.md"  # the investigation's record, quoted in the report


@dataclass(frozen=True)
class Sizes:
    """What a run measures; ``--quick`` swaps the whole set."""

    block_lens: list[int]
    candidates: list[int]
    rounds: int
    warmup: int
    served_requests: int
    pa_interval_ms: int
    concurrency: list[int]
    cache_dtypes: list[str]
    session_lane: int
    session_candidates: list[int]


FULL = Sizes([16, 48], [16, 64, 256, 1024], 11, 2, 256, 2000, [1, 2, 4, 8, 16], ["fp32", "fp16"], 300, [64, 256])
QUICK = Sizes([16], [16, 64], 2, 1, 8, 500, [1, 2], ["fp32"], 16, [64])


def dtype_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in CACHE_DTYPES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {sorted(CACHE_DTYPES)}, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    f, q = FULL, QUICK
    p = argparse.ArgumentParser(
        prog=program_name("bench"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few shapes, rounds and requests")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where results.json, report.md and the plots go (default: {DEFAULT_OUT.relative_to(ROOT)}; "
        "with --quick a temp folder, so a smoke run never overwrites the committed results)",
    )
    p.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder (default: the trained small)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for torch, in-process ONNX Runtime and each served model instance (default 1: what "
        "`python -m export` gives each Triton instance, so in-process and served compare at equal threads)",
    )
    p.add_argument(
        "--block-lens",
        type=int_list,
        default=None,
        help=f"history lengths Tb for (a) and (b) (default {f.block_lens}; quick {q.block_lens})",
    )
    p.add_argument(
        "--candidates",
        type=int_list,
        default=None,
        help=f"candidate counts N for (a) and (b) (default {f.candidates}; quick {q.candidates})",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"timed rounds per cell of (a), (b) (default {f.rounds}; quick {q.rounds})",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"untimed rounds before each cell (default {f.warmup}; quick {q.warmup})",
    )
    p.add_argument(
        "--per-pair-full-max",
        type=int,
        default=64,
        help="largest N at which per-pair is timed in full; above it, it is timed on a subset and scaled (default 64)",
    )
    p.add_argument(
        "--per-pair-subset", type=int, default=16, help="candidates per-pair is timed on above --per-pair-full-max"
    )
    p.add_argument(
        "--served-requests",
        type=int,
        default=None,
        help=f"requests per phase of (c) (default {f.served_requests}; quick {q.served_requests})",
    )
    p.add_argument(
        "--pa-interval-ms",
        type=int,
        default=None,
        help=f"perf_analyzer measurement window in ms (default {f.pa_interval_ms}; quick {q.pa_interval_ms})",
    )
    p.add_argument(
        "--pa-max-trials", type=int, default=6, help="perf_analyzer windows per level before it gives up on stability"
    )
    p.add_argument(
        "--session-lane",
        type=int,
        default=None,
        help=f"(f) requests per client lane of the session trace (default {f.session_lane}; quick {q.session_lane})",
    )
    p.add_argument(
        "--session-candidates",
        type=int_list,
        default=None,
        help=f"(f) fresh candidates per session request (default {f.session_candidates}; quick {q.session_candidates})",
    )
    p.add_argument("--session-k", type=int, default=4, help="(f) requests per session (default 4)")
    p.add_argument(
        "--session-rounds", type=int, default=None, help="(f) rounds, a fresh trace each (default 3; quick 1)"
    )
    p.add_argument("--session-concurrency", type=int, default=4, help="(f) client lanes (default 4)")
    p.add_argument(
        "--concurrency",
        type=int_list,
        default=None,
        help=f"client concurrencies of (c) (default {f.concurrency}; quick {q.concurrency})",
    )
    p.add_argument(
        "--cache-dtypes",
        type=dtype_list,
        default=None,
        help=f"keys/values cache dtypes served in (c) (default {','.join(f.cache_dtypes)}; quick "
        f"{','.join(q.cache_dtypes)}); (b) always times both",
    )
    p.add_argument("--served-block-len", type=int, default=48, help="Tb of the served requests (default 48)")
    p.add_argument("--served-candidates", type=int, default=256, help="N of the served requests (default 256)")
    p.add_argument("--served-batch", type=int, default=1, help="users per served request (default 1)")
    p.add_argument(
        "--time-cap", type=float, default=30.0, help="seconds after which a phase of (c) starts no new request"
    )
    p.add_argument("--matmul-size", type=int, default=1024, help="side of the square fp32 matrices of (d)")
    p.add_argument(
        "--baseline-onnx",
        type=Path,
        default=None,
        help="folder with user_encoder.onnx and item_scorer.onnx (fp32 cache, same checkpoint) of an earlier export, "
        f"timed as {BASELINE!r} beside this run's graphs in (b), (d) and (d)'s per-operator profile: a change "
        "before/after in one run",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the exported ONNX graphs and repositories here (default: temp)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every request")
    p.add_argument("--train-users", type=int, default=8, help="(g) users (SUMI rows) per training step (default 8)")
    p.add_argument(
        "--train-candidates", type=int, default=32, help="(g) candidates per user (per-pair rows = users x this)"
    )
    p.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="measure nothing: re-render report.md and the plots from this results.json (into --out)",
    )
    a = p.parse_args(argv)
    sizes = QUICK if a.quick else FULL
    for name in (
        "block_lens",
        "candidates",
        "rounds",
        "warmup",
        "served_requests",
        "pa_interval_ms",
        "concurrency",
        "session_lane",
        "session_candidates",
    ):
        if getattr(a, name) is None:
            setattr(a, name, getattr(sizes, name))
    if a.cache_dtypes is None:
        a.cache_dtypes = sizes.cache_dtypes
    if a.session_rounds is None:
        a.session_rounds = 1 if a.quick else 3
    if a.out is None:
        a.out = Path(tempfile.gettempdir()) / "astro-bench-quick" if a.quick else DEFAULT_OUT
    if a.from_results is not None and not a.from_results.is_file():
        p.error(f"--from-results: no file {a.from_results}")
    if min(a.threads, a.rounds, a.served_requests, a.pa_interval_ms, a.per_pair_subset, a.served_batch) < 1:
        p.error(
            "--threads, --rounds, --served-requests, --pa-interval-ms, --per-pair-subset, --served-batch must be >= 1"
        )
    if a.served_batch != 1:
        p.error("--served-batch: perf_analyzer's input data sends batch-1 requests")
    if min(a.session_lane, a.session_k, a.session_concurrency, a.pa_max_trials, a.session_rounds) < 1:
        p.error("--session-lane, --session-k, --session-concurrency, --session-rounds, --pa-max-trials must be >= 1")
    if a.warmup < 0 or a.time_cap <= 0:
        p.error("--warmup must be >= 0 and --time-cap > 0")
    return a


class Progress:
    """Progress lines on stderr with the elapsed time, so a long run shows where it is."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, line: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {line}", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def export_repositories(
    checkpoint: Path, work: Path, cache_dtypes: Sequence[str], threads: int, say: Callable[[str], None]
) -> dict[str, Path]:
    """`python -m export --target python` per cache dtype; returns dtype -> repository (graphs in work/)."""
    repos = {}
    for dtype in cache_dtypes:
        say(f"  python -m export --target python --cache-dtype {dtype} (parity skipped: (c) checks served == ORT)")
        repo = work / f"repo-{dtype}"
        args = ["--target", "python", "--cache-dtype", dtype, "--checkpoint", str(checkpoint)]
        args += ["--out", str(repo), "--work-dir", str(work / "onnx"), "--threads", str(threads), "--skip-parity"]
        if export_main(args) != 0:
            raise SystemExit(f"bench: python -m export {shlex.join(args)} failed")
        repos[dtype] = repo
    return repos


def check_shapes(a: argparse.Namespace, cfg: AstroConfig) -> None:
    """The default shapes suit the `small` preset; refuse, before any work, ones another checkpoint's
    config cannot take (the served requests must fit its limits; in-process paths only its Tb)."""
    problems = [f"Tb={tb} > max_block_len={cfg.max_block_len}" for tb in a.block_lens if tb > cfg.max_block_len]
    if a.served_block_len > cfg.max_block_len:
        problems.append(f"--served-block-len {a.served_block_len} > max_block_len={cfg.max_block_len}")
    if a.served_candidates > cfg.max_candidates:
        problems.append(f"--served-candidates {a.served_candidates} > max_candidates={cfg.max_candidates}")
    if a.served_batch > cfg.max_batch_size:
        problems.append(f"--served-batch {a.served_batch} > max_batch_size={cfg.max_batch_size}")
    if problems:
        raise SystemExit(f"error: the {cfg.name!r} checkpoint cannot take these shapes: {'; '.join(problems)}")


def scorer_instances(repository: Path, out: Path, count: int) -> Path:
    """A copy of ``repository`` whose ``item_scorer`` runs ``count`` instances (everything else unchanged)."""
    shutil.copytree(repository, out, dirs_exist_ok=True)
    config = read_model_config(out / ITEM_SCORER / "config.pbtxt")
    config.instance_group[0].count = count
    write_config(out / ITEM_SCORER / "config.pbtxt", config)
    return out


def encoder_merging(repository: Path, out: Path) -> Path:
    """A copy of ``repository`` whose ``user_encoder`` has no preferred batch size (merges what arrives together)."""
    shutil.copytree(repository, out, dirs_exist_ok=True)
    config = read_model_config(out / USER_ENCODER / "config.pbtxt")
    config.dynamic_batching.ClearField("preferred_batch_size")
    write_config(out / USER_ENCODER / "config.pbtxt", config)
    return out


def tools(say: Callable[[str], None]) -> PerfAnalyzer:
    """perf_analyzer and its libraries, installed where possible; stops the run at once, saying what is missing."""
    try:
        pa = locate(install=True, say=say)
    except ToolMissing as e:
        raise SystemExit(f"error: {e}") from None
    say(f"perf_analyzer {pa.version}: {pa.binary}")
    return pa


def run(a: argparse.Namespace, work: Path, say: Progress) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    info = machine.describe(a.threads)
    say(f"machine: {info['cpu']}, {info['cpus_usable']} cores, {a.threads} thread(s), GPU: {info['gpu']}")
    model = load_checkpoint(a.checkpoint)
    cfg = model.cfg
    check_shapes(a, cfg)
    cpu = torch.device("cpu")
    pa = tools(say)

    say("[1/8] ONNX graphs and python-target repositories (fp32 and fp16 cache)")
    export_dtypes = list(CACHE_DTYPES)  # (b) times both; (c) serves a.cache_dtypes of them
    repos = export_repositories(a.checkpoint, work, export_dtypes, a.threads, say)
    pipes = {f"ort_{d}": OrtPipeline(load_graph_paths(work / "onnx" / f"{cfg.name}-{d}"), a.threads) for d in repos}
    if a.baseline_onnx is not None:
        pipes[BASELINE] = OrtPipeline(load_graph_paths(a.baseline_onnx), a.threads)

    say("[2/8] (a) TURBO: per-pair vs SUMI vs split, PyTorch on CPU")
    turbo_args = (a.block_lens, a.candidates, a.rounds, a.warmup, a.per_pair_full_max, a.per_pair_subset, a.seed, say)
    turbo = run_turbo(model, cpu, *turbo_args)

    say("[3/8] (b) runtimes: PyTorch eager vs ONNX Runtime fp32 / fp16 cache, CPU")
    runtimes = run_runtimes(model, cpu, pipes, a.block_lens, a.candidates, a.rounds, a.warmup, a.seed, say)

    say(f"[4/8] (c) served: perf_analyzer on the ensemble vs in-process ONNX Runtime, concurrency {a.concurrency}")
    requests = [
        make_request(cfg, a.seed + i, a.served_batch, a.served_block_len, a.served_candidates)
        for i in range(a.served_requests)
    ]
    settings = PaSettings(interval_ms=a.pa_interval_ms, max_trials=a.pa_max_trials)
    served = []
    triton_version = "not run"
    for dtype in a.cache_dtypes:
        levels, triton_version = run_served(
            repos[dtype], dtype, pipes[f"ort_{dtype}"], requests, a.concurrency, pa, settings, a.time_cap, say
        )
        served += levels
    served_variants = []
    variant = scorer_instances(repos["fp32"], work / "repo-fp32-scorer1", 1)
    variant_levels = [c for c in a.concurrency if c >= GOAL_CONCURRENCY]
    if not a.quick and variant_levels:
        say(f"  (c) again with item_scorer on 1 instance, as before (fp32), concurrency {variant_levels}")
        levels, _ = run_served(
            variant, "fp32", pipes["ort_fp32"], requests, variant_levels, pa, settings, a.time_cap, say
        )
        served_variants.append({"config": SCORER1, "levels": [lv.to_dict() for lv in levels]})
    # where the lock-step showed (deeper queues merge either way)
    merging_levels = [c for c in a.concurrency if SERVED_GOAL_MIN_CONCURRENCY <= c <= 4]
    if not a.quick and merging_levels:
        merging = encoder_merging(repos["fp32"], work / "repo-fp32-encoder-merging")
        say(f"  (c) again with user_encoder merging requests, as before (fp32), concurrency {merging_levels}")
        levels, _ = run_served(
            merging, "fp32", pipes["ort_fp32"], requests, merging_levels, pa, settings, a.time_cap, say
        )
        served_variants.append({"config": ENCODER_MERGING, "levels": [lv.to_dict() for lv in levels]})

    say(f"[5/8] (f) session traffic, k={a.session_k}, response cache off vs on, concurrency {a.session_concurrency}")
    session_model = SessionModel(k=a.session_k)
    sessions = run_sessions(
        repos["fp32"],
        cfg,
        session_model,
        a.session_candidates,
        a.session_concurrency,
        a.session_lane,
        pa,
        a.seed,
        say,
        rounds=a.session_rounds,
    )
    sessions["config"] = AS_EXPORTED
    variants = []
    if not a.quick:
        say("  (f) again with item_scorer on 1 instance, as before: the core the cache frees from the encoder idles")
        args = (cfg, session_model, a.session_candidates, a.session_concurrency, a.session_lane, pa, a.seed, say)
        variants.append({**run_sessions(variant, *args, rounds=a.session_rounds), "config": SCORER1})

    say("  overload: 1x..8x the capacity, queues unbounded vs as exported (bench/overload.py)")
    overloaded = overload.run_overload(
        repos["fp32"], cfg, overload.QUICK if a.quick else overload.Settings(), work, say
    )
    say("  (h) replicas: the session traffic against 1, 2, 3 replicas, round_robin vs affinity, and a kill run")
    replica_counts, lanes, per_lane = ((1, 2), 4, 4) if a.quick else ((1, 2, 3), 8, 120)
    replicas = run_replicas(repos["fp32"], cfg, session_model, lanes, per_lane, a.seed, say, replica_counts)

    say("[6/8] (d) limit: torch.matmul rate and block attention")
    peak = matmul_rate(a.matmul_size, max(3, a.rounds), cpu)
    say(f"  torch.matmul {a.matmul_size}x{a.matmul_size} fp32, {a.threads} thread(s): {peak.median / 1e9:.1f} GFLOP/s")
    blocks = block_attention.run(cfg, a.block_lens, [1], a.warmup, max(3, a.rounds), a.seed)
    profiled = {"ort_fp32": load_graph_paths(work / "onnx" / f"{cfg.name}-fp32")}
    if a.baseline_onnx is not None:
        profiled[BASELINE] = load_graph_paths(a.baseline_onnx)
    counts = [n for n in a.candidates if n >= PROFILED_MIN_N] or [max(a.candidates)]
    say(f"  ONNX Runtime's profiler per operator: {', '.join(profiled)}, Tb={max(a.block_lens)}, N={counts}")
    profile_requests = [make_request(cfg, a.seed, 1, max(a.block_lens), n) for n in counts]
    ops = op_profile.run(profiled, profile_requests, a.threads, a.warmup, max(5, a.rounds), work / "op-profile")
    ort_peak = op_profile.ort_matmul_rate(a.matmul_size, max(3, a.rounds), a.threads)
    say(f"  ONNX Runtime MatMul {a.matmul_size}x{a.matmul_size} fp32: {ort_peak.median / 1e9:.1f} GFLOP/s")

    say("[7/8] (e) CUDA GPU")
    gpu: dict[str, Any] = {"device": machine.gpu_name()}
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gpu["turbo"] = [c.to_dict() for c in run_turbo(load_checkpoint(a.checkpoint), dev, *turbo_args)]
        gpu["runtimes"] = [
            c.to_dict()
            for c in run_runtimes(
                load_checkpoint(a.checkpoint), dev, {}, a.block_lens, a.candidates, a.rounds, a.warmup, a.seed, say
            )
        ]
        gpu["matmul_flops"] = matmul_rate(4096, max(3, a.rounds), dev, device_sync(dev)).to_dict()
    else:
        say(f"  {machine.NO_GPU} to PyTorch: (a) and (b) ran on the CPU only")

    say("[8/8] (g) training: SUMI rows vs one (user, item) per row, same model, data and optimiser step")
    train_rounds = max(3, a.rounds)
    users, cands = (2, 8) if a.quick else (a.train_users, a.train_candidates)  # --quick: a smoke run
    training = [run_training(cfg, users, cands, train_rounds, 1, "cpu", say).to_dict()]
    if torch.cuda.is_available():
        training.append(run_training(cfg, users, cands, train_rounds, 1, "cuda", say).to_dict())

    info["load_average_end"] = machine.load_average()
    return {
        "command": shlex.join(["python", "-m", "bench", *(sys.argv[1:] if a.argv is None else a.argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(time.time() - say.elapsed)),
        "seconds": say.elapsed,
        "machine": {**info, "triton_server": triton_version},
        "config": {**cfg.model_dump(), "checkpoint": str(a.checkpoint)},
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("argv", "work_dir")
        },
        "turbo": [c.to_dict() for c in turbo],
        "runtimes": [c.to_dict() for c in runtimes],
        "served": {
            "batch": a.served_batch,
            "block_len": a.served_block_len,
            "candidates": a.served_candidates,
            "requests": a.served_requests,
            "padding": sum(padding_fraction(r) for r in requests) / len(requests),
            "handoff_bytes": {
                d: handoff_bytes(cfg, a.served_batch, a.served_block_len, d) for d in sorted(CACHE_DTYPES)
            },
            "wire_bytes": wire_bytes(cfg, a.served_batch, a.served_block_len, a.served_candidates),
            "levels": [lv.to_dict() for lv in served],
            "perf_analyzer": {"version": pa.version, "settings": asdict(settings)},
            "config": AS_EXPORTED,
            "variants": served_variants,
        },
        "sessions": sessions,
        "session_variants": variants,
        "overload": overloaded,
        "replicas": replicas,
        "matmul_flops": peak.to_dict(),
        "op_profile": [o.to_dict() for o in ops],
        "ort_matmul_flops": ort_peak.to_dict(),
        "block_attention": [
            {"block_len": r.block_len, "batch": r.batch, "blocks_ms": r.blocks_ms, "one_block_ms": r.one_block_ms}
            for r in blocks
        ],
        "gpu": gpu,
        "training": training,
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.argv = argv
    say = Progress()
    say(f"python -m bench: results -> {a.out}")
    if a.from_results is not None:
        results = json.loads(a.from_results.read_text())
    elif a.work_dir is not None:
        a.work_dir.mkdir(parents=True, exist_ok=True)
        results = run(a, a.work_dir, say)
    else:
        with tempfile.TemporaryDirectory(prefix="astro-bench-") as tmp:
            results = run(a, Path(tmp), say)
    results["efficiency"] = efficiency_rows(
        config_of(results), results["turbo"], results["runtimes"], results["matmul_flops"]["median"]
    )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    images = plots.write_all(results, a.out)
    (a.out / "report.md").write_text(report.render(results, images, FINDINGS.read_text()))
    say(f"done in {say.elapsed:.0f} s: {a.out / 'report.md'}, results.json, {len(images)} plots")
    print(report.headline(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
