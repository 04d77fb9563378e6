"""``python -m bench`` (``make bench``): TURBO breakdown, runtimes, served Triton, FLOP limit, GPU.

    python -m bench                    # the default preset (about 10 min on 2 CPU cores) -> docs/bench/
    python -m bench --quick            # = --preset quick: a smoke run, written to a temp folder unless --out
    python -m bench --threads 2        # another thread count for torch, ONNX Runtime and the served models
    python -m bench --from-results docs/bench/results.json --out docs/bench   # re-render, measure nothing

Needs perf_analyzer (from the tritonclient==2.51.0 wheel), libb64-0d and libcudart.so.12: `make bench-tools`
installs them (`make bench` runs it first); a missing one stops the run at once, named.

Sections (docs/bench/report.md explains each):
  (a) per-pair vs SUMI vs split, in-process PyTorch, the trained small checkpoint;
  (b) the split graphs in PyTorch eager vs ONNX Runtime, fp32 and fp16 keys/values cache;
  (c) the Triton ensemble (python target) driven by perf_analyzer vs in-process ONNX Runtime, same requests;
  (d) FLOPs per graph from the config against torch.matmul's measured rate, and ONNX Runtime's profile;
  (e) (a) and the PyTorch half of (b) on a CUDA GPU, where PyTorch sees one;
  (f) session traffic (Zipf users, k requests per session) with Triton's response cache off and on;
  (g) training samples/s in SUMI rows vs one (user, item) per row, same model (the paper's 5.15x);
  overload: 1x..8x the measured capacity, queues unbounded vs bounded as exported (bench/overload.py);
  (h) the session traffic of (f) against 1, 2, 3 local replicas, round_robin vs affinity, and a kill run.
Every ratio is taken inside one round of one run and reported as median and spread over rounds.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from bench import block_attention, machine, op_profile, overload, plots, replicas, report
from bench.perf_analyzer import PaSettings, PerfAnalyzer, ToolMissing, locate
from bench.presets import PRESETS, Preset
from bench.results import Gpu, Results, Sessions, as_type, dump, load
from bench.roofline import efficiency_rows, matmul_rate
from bench.runtimes import run_runtimes
from bench.served import PaInfo, Served, ServedLevel, ServedVariant, handoff_bytes, run_served, wire_bytes
from bench.sessions import SessionModel, run_sessions
from bench.training import run_training
from bench.turbo import Grid, device_sync, run_turbo
from bench.variants import (
    AS_EXPORTED,
    ENCODER_MERGING,
    SCORER1,
    admitted_concurrency,
    encoder_merging,
    export_python,
    scorer_instances,
)
from bench.workload import make_request, padding_fraction
from contract.config import AstroConfig
from contract.program import program_name
from contract.tensors import CACHE_DTYPES
from export.parity import OrtPipeline, load_graph_paths
from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from model.checkpoint import load_config as load_model_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "bench"
BASELINE = "ort_fp32_before"  # the --baseline-onnx graphs' runtime name
PROFILED_MIN_N = 256  # (d)'s per-operator profile: the N of (b) from here up (the largest one if none)


def parser(description: str | None, prog: str) -> argparse.ArgumentParser:
    """The flags ``python -m bench`` and its standalone sections share."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="what to measure (default: default)")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset", help="= --preset quick")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where the results and the report go (default: {DEFAULT_OUT.relative_to(ROOT)}; with the quick "
        "preset a temp folder, so a smoke run never overwrites the committed results)",
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder (default: small)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for torch, in-process ONNX Runtime and each served model instance (default 1: what "
        "`python -m export` gives each Triton instance, so in-process and served compare at equal threads)",
    )
    p.add_argument("--from-results", type=Path, default=None, help="measure nothing: re-render from this results file")
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None, module: str) -> argparse.Namespace:
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.from_results is not None and not a.from_results.is_file():
        p.error(f"--from-results: no file {a.from_results}")
    if a.out is None:
        a.out = Path(tempfile.gettempdir()) / f"astro-{module}-quick" if a.preset == "quick" else DEFAULT_OUT
    a.command = shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
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


def check_shapes(p: Preset, cfg: AstroConfig) -> None:
    """The presets suit the `small` config; refuse, before any work, shapes another checkpoint's config cannot take
    (the served requests must fit its limits; in-process paths only its Tb)."""
    problems = [f"Tb={tb} > max_block_len={cfg.max_block_len}" for tb in p.block_lens if tb > cfg.max_block_len]
    if p.served_block_len > cfg.max_block_len:
        problems.append(f"served Tb={p.served_block_len} > max_block_len={cfg.max_block_len}")
    if p.served_candidates > cfg.max_candidates:
        problems.append(f"served N={p.served_candidates} > max_candidates={cfg.max_candidates}")
    if problems:
        raise SystemExit(f"error: the {cfg.name!r} checkpoint cannot take these shapes: {'; '.join(problems)}")


def tools(say: Progress) -> PerfAnalyzer:
    """perf_analyzer and its libraries; stops the run at once, saying what is missing."""
    try:
        pa = locate()
    except ToolMissing as e:
        raise SystemExit(f"error: {e}") from None
    say(f"perf_analyzer {pa.version}: {pa.binary}")
    return pa


def run(a: argparse.Namespace, work: Path, say: Progress) -> Results:
    p: Preset = PRESETS[a.preset]
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    info = machine.describe(a.threads)
    say(f"machine: {info.cpu}, {info.cpus_usable} cores, {a.threads} thread(s), GPU: {info.gpu}")
    model = load_checkpoint(a.checkpoint)
    cfg = model.cfg
    check_shapes(p, cfg)
    cpu = torch.device("cpu")
    pa = tools(say)

    say("[1/8] ONNX graphs and python-target repositories (fp32 and fp16 cache)")
    repos: dict[str, Path] = {
        d: export_python(a.checkpoint, work, d, a.threads) for d in CACHE_DTYPES
    }  # (b) times both
    pipes = {f"ort_{d}": OrtPipeline(load_graph_paths(work / "onnx" / f"{cfg.name}-{d}"), a.threads) for d in repos}
    if a.baseline_onnx is not None:
        pipes[BASELINE] = OrtPipeline(load_graph_paths(a.baseline_onnx), a.threads)

    say("[2/8] (a) TURBO: per-pair vs SUMI vs split, PyTorch on CPU")
    grid = Grid(p.block_lens, p.candidates, p.rounds, p.warmup, p.seed)
    turbo = run_turbo(model, cpu, grid, p.per_pair_full_max, p.per_pair_subset, say)

    say("[3/8] (b) runtimes: PyTorch eager vs ONNX Runtime fp32 / fp16 cache, CPU")
    runtimes = run_runtimes(model, cpu, pipes, grid, say)

    say(f"[4/8] (c) served: perf_analyzer on the ensemble vs in-process ONNX Runtime, concurrency {p.concurrency}")
    requests = [
        make_request(cfg, p.seed + i, 1, p.served_block_len, p.served_candidates) for i in range(p.served_requests)
    ]
    settings = PaSettings(interval_ms=p.pa_interval_ms, max_trials=p.pa_max_trials)

    def served_levels(repo: Path, dtype: str, levels: list[int]) -> tuple[list[ServedLevel], str]:
        return run_served(repo, dtype, pipes[f"ort_{dtype}"], requests, levels, pa, settings, p.time_cap, say)

    admitted = admitted_concurrency(repos["fp32"])
    concurrency = [c for c in p.concurrency if admitted is None or c <= admitted]
    if concurrency != list(p.concurrency):
        say(f"  (c) concurrency {concurrency}: above {admitted} callers the exported queue bounds refuse by design")
    levels, triton_version = [], "not run"
    for dtype in p.cache_dtypes:
        more, triton_version = served_levels(repos[dtype], dtype, concurrency)
        levels += more
    scorer1 = scorer_instances(repos["fp32"], work / "repo-fp32-scorer1", 1)
    variants = []
    if p.served_variants:  # each where it showed: one scorer instance at >= 4, the encoder's lock-step at 2 to 4
        for config, repo, at in (
            (SCORER1, scorer1, [c for c in concurrency if c >= report.GOAL_CONCURRENCY]),
            (
                ENCODER_MERGING,
                encoder_merging(repos["fp32"], work / "repo-fp32-encoder-merging"),
                [c for c in concurrency if report.SERVED_GOAL_MIN_CONCURRENCY <= c <= 4],
            ),
        ):
            say(f"  (c) again on a variant, {config} (fp32), concurrency {at}")
            variants.append(ServedVariant(config, served_levels(repo, "fp32", at)[0]))
    served = Served(
        batch=1,
        block_len=p.served_block_len,
        candidates=p.served_candidates,
        requests=p.served_requests,
        padding=sum(padding_fraction(r) for r in requests) / len(requests),
        handoff_bytes={d: handoff_bytes(cfg, 1, p.served_block_len, d) for d in sorted(CACHE_DTYPES)},
        wire_bytes=wire_bytes(cfg, 1, p.served_block_len, p.served_candidates),
        levels=levels,
        perf_analyzer=PaInfo(pa.version, settings),
        config=AS_EXPORTED,
        variants=variants,
        admitted_concurrency=admitted or 0,
    )

    say(f"[5/8] (f) session traffic, k={p.session_k}, response cache off vs on, concurrency {p.session_concurrency}")
    session_model = SessionModel(k=p.session_k)
    session_args = (
        cfg,
        session_model,
        list(p.session_candidates),
        p.session_concurrency,
        p.session_lane,
        pa,
        p.seed,
        say,
    )

    def sessions_on(repo: Path, config: str) -> Sessions:
        sessions: Sessions = as_type(
            Sessions, {**run_sessions(repo, *session_args, rounds=p.session_rounds), "config": config}
        )
        return sessions

    sessions = sessions_on(repos["fp32"], AS_EXPORTED)
    session_variants = []
    if p.served_variants:
        say("  (f) again with item_scorer on 1 instance, as before: the core the cache frees from the encoder idles")
        session_variants.append(sessions_on(scorer1, SCORER1))
    say("  overload: 1x..8x the capacity, queues unbounded vs as exported (bench/overload.py)")
    overloaded = overload.run_overload(repos["fp32"], cfg, p.overload, work, say)
    say("  (h) replicas: the session traffic against 1, 2, 3 replicas, round_robin vs affinity, and a kill run")
    replicated = replicas.run_replicas(
        repos["fp32"], cfg, session_model, p.replica_lanes, p.replica_per_lane, p.seed, say, p.replica_counts
    )

    say("[6/8] (d) limit: torch.matmul rate and block attention")
    repeats = max(3, p.rounds)
    peak = matmul_rate(p.matmul_size, repeats, cpu)
    say(f"  torch.matmul {p.matmul_size}x{p.matmul_size} fp32, {a.threads} thread(s): {peak.median / 1e9:.1f} GFLOP/s")
    blocks = block_attention.run(cfg, list(p.block_lens), [1], p.warmup, repeats, p.seed)
    profiled = {"ort_fp32": load_graph_paths(work / "onnx" / f"{cfg.name}-fp32")}
    if a.baseline_onnx is not None:
        profiled[BASELINE] = load_graph_paths(a.baseline_onnx)
    counts = [n for n in p.candidates if n >= PROFILED_MIN_N] or [max(p.candidates)]
    say(f"  ONNX Runtime's profiler per operator: {', '.join(profiled)}, Tb={max(p.block_lens)}, N={counts}")
    profile_requests = [make_request(cfg, p.seed, 1, max(p.block_lens), n) for n in counts]
    ops = op_profile.run(profiled, profile_requests, a.threads, p.warmup, max(5, p.rounds), work / "op-profile")
    ort_peak = op_profile.ort_matmul_rate(p.matmul_size, repeats, a.threads)
    say("  each graph back to back, as a served instance runs it (the goals' rates)")
    steady_requests = [make_request(cfg, p.seed, 1, tb, n) for tb in p.block_lens for n in p.candidates]
    steady = op_profile.steady_rates(profiled, steady_requests, cfg, a.threads, repeats)
    say(f"  ONNX Runtime MatMul {p.matmul_size}x{p.matmul_size} fp32: {ort_peak.median / 1e9:.1f} GFLOP/s")

    say("[7/8] (e) CUDA GPU")
    gpu = Gpu(machine.gpu_name())
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gpu = Gpu(
            gpu.device,
            run_turbo(load_checkpoint(a.checkpoint), dev, grid, p.per_pair_full_max, p.per_pair_subset, say),
            run_runtimes(load_checkpoint(a.checkpoint), dev, {}, grid, say),
            matmul_rate(4096, repeats, dev, device_sync(dev)),
        )
    else:
        say(f"  {machine.NO_GPU} to PyTorch: (a) and (b) ran on the CPU only")

    say("[8/8] (g) training: SUMI rows vs one (user, item) per row, same model, data and optimiser step")
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    training = [run_training(cfg, p.train_users, p.train_candidates, repeats, 1, d, say) for d in devices]

    return Results(
        command=a.command,
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(time.time() - say.elapsed)),
        seconds=say.elapsed,
        machine=replace(info, load_average_end=machine.load_average(), triton_server=triton_version),
        config={**cfg.model_dump(), "checkpoint": str(a.checkpoint)},
        settings={
            "preset": a.preset,
            **asdict(p),
            "threads": a.threads,
            "checkpoint": str(a.checkpoint),
            "baseline_onnx": None if a.baseline_onnx is None else str(a.baseline_onnx),
        },
        turbo=turbo,
        runtimes=runtimes,
        served=served,
        sessions=sessions,
        session_variants=session_variants,
        matmul_flops=peak,
        block_attention=blocks,
        gpu=gpu,
        training=training,
        efficiency=efficiency_rows(cfg, turbo, runtimes, peak.median),
        overload=overloaded,
        replicas=replicated,
        op_profile=ops,
        ort_matmul_flops=ort_peak,
        steady=steady,
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, program_name("bench"))
    p.add_argument(
        "--baseline-onnx",
        type=Path,
        default=None,
        help="folder with user_encoder.onnx and item_scorer.onnx (fp32 cache, same checkpoint) of an earlier export, "
        f"timed as {BASELINE!r} beside this run's graphs in (b), (d) and (d)'s per-operator profile: a change "
        "before/after in one run",
    )
    a = parse_args(p, argv, "bench")
    say = Progress()
    say(f"python -m bench --preset {a.preset}: results -> {a.out}")
    if a.from_results is not None:  # the FLOP counts are code: (d)'s shares from the stored times, counted anew
        results = load(Results, a.from_results)
        results = replace(
            results,
            efficiency=efficiency_rows(results.cfg, results.turbo, results.runtimes, results.matmul_flops.median),
        )
    else:
        with tempfile.TemporaryDirectory(prefix="astro-bench-") as tmp:
            results = run(a, Path(tmp), say)
        dump(results, a.out / "results.json")
    a.out.mkdir(parents=True, exist_ok=True)
    images = plots.write_all(results, a.out)
    (a.out / "report.md").write_text(report.render(results, images))
    say(f"done in {say.elapsed:.0f} s: {a.out / 'report.md'}, results.json, {len(images)} plots")
    print(report.headline(results))
    return 0


def section_main(name: str, argv: list[str] | None = None) -> int:
    """``python -m bench.overload`` / ``python -m bench.replicas``: that section alone, into ``<name>.json`` and
    ``<name>.md`` (the same template as the report's section)."""
    module = {"overload": overload, "replicas": replicas}[name]
    a = parse_args(parser((module.__doc__ or "").split("\n\n")[0], f"python -m bench.{name}"), argv, f"bench.{name}")
    kind = {"overload": overload.Overload, "replicas": replicas.Replicas}[name]
    if a.from_results is not None:
        results: Any = load(kind, a.from_results)
    else:
        preset, say = PRESETS[a.preset], Progress()
        cfg = load_model_config(a.checkpoint)
        with tempfile.TemporaryDirectory(prefix=f"astro-{name}-") as tmp:
            repo = export_python(a.checkpoint, Path(tmp), "fp32", a.threads)
            if name == "overload":
                results = overload.run_overload(repo, cfg, preset.overload, Path(tmp), say)
            else:
                counts, lanes, per_lane = preset.replica_counts, preset.replica_lanes, preset.replica_per_lane
                results = replicas.run_replicas(repo, cfg, SessionModel(), lanes, per_lane, preset.seed, say, counts)
        results = replace(results, command=a.command)
        dump(results, a.out / f"{name}.json")
    a.out.mkdir(parents=True, exist_ok=True)
    text = report.render_section(name, results)
    (a.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
