"""``python -m export``: checkpoint -> ONNX -> (TensorRT) -> checked Triton model repository.

    python -m export                       # the embedded small checkpoint, target picked for this host
    python -m export --target onnxruntime  # force a target
    python -m export --cache-dtype fp16    # halve the keys/values bytes between ensemble steps
    python -m export --target tensorrt --precision fp16 --triton-release 26.03   # on a GPU host

Steps, each reported as it runs: load (or first train) the checkpoint, export both graphs
to ONNX (checker + shape inference), ONNX Runtime vs PyTorch parity over a grid of shapes,
TensorRT engines (tensorrt target: fp16/bf16 from the mixed-precision graph of
export/precision.py, itself checked against the fp32 graph in ONNX Runtime first), write the
repository, validate every config.pbtxt, the ensemble wiring and every plan's TensorRT version
against the target container, then print a summary that says how to serve the result.

A request that cannot be carried out here (a forced ``--target tensorrt`` without TensorRT and a
GPU, an unknown ``--triton-release``) fails before any work; every error of the export ends as
one line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np

from contract.config import AstroConfig, ConfigError
from contract.program import program_name
from contract.tensors import CACHE_DTYPES, ITEM_SCORER, USER_ENCODER, CacheDType
from export.onnx_graphs import GraphPaths, export_graphs
from export.parity import OrtPipeline, ParityError, check_ort_parity, shape_grid
from export.precision import LowPrecision, PrecisionError, compare_pipelines, convert_file
from export.provenance import new_provenance, save_provenance, toolchain
from export.repository import TARGETS, Target, write_repository
from export.repository_check import RepositoryError, check_repository
from export.tensorrt_budget import ENGINE_BUDGET_GIB, fit_to_gpu
from export.tensorrt_build import (
    EngineBuildError,
    Precision,
    TensorRTUnavailable,
    build_engine,
    installed_tensorrt,
    tensorrt_available,
)
from export.tensorrt_versions import (
    TensorRTVersionError,
    TritonRelease,
    plan_problem,
    release,
    releases_shipping,
    supported_releases,
)
from model.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from model.random_inputs import random_request

ROOT = Path(__file__).resolve().parent.parent


class ExportError(RuntimeError):
    """A bad export request; the message says what to do."""


# Every error the export raises on purpose; each ends as one line and exit 2 (main)
TYPED_ERRORS: tuple[type[Exception], ...] = (
    ExportError,
    CheckpointError,
    ConfigError,
    TensorRTUnavailable,
    EngineBuildError,
    TensorRTVersionError,
    PrecisionError,
    ParityError,
    RepositoryError,
)
MAX_DETAIL_LINES = 6


def one_line(e: BaseException) -> str:
    """An error message as one line: its first line, then up to :data:`MAX_DETAIL_LINES` details."""
    lines = [" ".join(line.split()) for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    more = f"; ... and {len(rest) - MAX_DETAIL_LINES} more" if len(rest) > MAX_DETAIL_LINES else ""
    return f"{head.rstrip(':')}: " + "; ".join(rest[:MAX_DETAIL_LINES]) + more


def pick_target(requested: str) -> tuple[Target, str]:
    """The target to build and why; a forced ``tensorrt`` that cannot be built here is an ExportError."""
    if requested != "auto":
        if requested not in TARGETS:
            raise ExportError(f"unknown target {requested!r}; choose auto or one of {', '.join(TARGETS)}")
        if requested == "tensorrt":
            ok, reason = tensorrt_available()
            if not ok:
                raise ExportError(f"--target tensorrt cannot be built on this host: {reason}")
            return "tensorrt", f"forced with --target; {reason}"
        return requested, "forced with --target"
    ok, reason = tensorrt_available()
    if ok:
        return "tensorrt", reason
    return "python", f"{reason.split('; ')[0]}; serving the ONNX graphs through Triton's Python backend instead"


def pick_container(target: Target, requested: str | None) -> TritonRelease | None:
    """The NGC Triton release the repository is for: named, or for tensorrt the newest one shipping
    the TensorRT installed here, or for onnxruntime the newest known; None for the python target."""
    if target == "python":
        return release(requested) if requested else None
    if target == "onnxruntime":
        return release(requested) if requested else supported_releases()[-1]
    version = installed_tensorrt()
    if requested:
        container = release(requested)
        if problem := plan_problem(version, container):
            raise ExportError(f"--triton-release {container.release}: the engines would be {problem}")
        return container
    if not (matching := releases_shipping(version)):
        raise ExportError(
            f"no known NGC Triton release ships TensorRT {version}, so no container could load these engines; "
            "name the one you serve in with --triton-release (its row must be in export/tensorrt_versions.py)"
        )
    return matching[-1]


def python_target_server() -> str:
    """What serves the python target: the tritonserver of the nvidia-pytriton wheel (``make serve``)."""
    return f"tritonserver from {toolchain('python', ['nvidia-pytriton']) or 'nvidia-pytriton'} (python backend)"


# The NGC command's response cache: 1 GiB, as deploy/'s ConfigMap (docs/deploy.md, section 5, sizes it).
# No CUDA memory pool, so the encoder's keys/values land in pinned host memory, where the cache can store
# them (Triton caches only responses whose outputs sit in CPU memory; docs/deploy.md, section 5).
NGC_SERVER_FLAGS = "--cache-config=local,size=1073741824 --cuda-memory-pool-byte-size=0:0"


def serve_hint(target: Target, out: Path, container: TritonRelease | None) -> str:
    """How to serve what was just written."""
    default = ROOT / "model_repository"
    if target == "python":
        if out.resolve() == default.resolve():
            return "Serve with `make serve`."
        return f"Serve with `.venv/bin/python -m serve --repository {out}`."
    assert container is not None  # pick_container returns one for these targets
    gpus = "--gpus all " if target == "tensorrt" else ""
    return (
        f"Serve it in the NGC container ({target} target; `make serve` runs the python target only): "
        f"docker run --rm {gpus}--shm-size 1g -p 8000:8000 -p 8001:8001 -p 8002:8002 "
        f'-v "{out.resolve()}:/models" {container.image} tritonserver --model-repository=/models ' + NGC_SERVER_FLAGS
    )


def check_low_precision(
    paths: GraphPaths, low: tuple[Path, Path], cfg: AstroConfig, precision: str, seed: int = 0
) -> str:
    """The converted graphs against the fp32 graphs in ONNX Runtime; ParityError outside tolerance."""
    if precision != "fp16":
        return f"{precision} graphs not run here: ONNX Runtime's CPU provider has no {precision} kernels for them"
    rng = np.random.default_rng(seed)
    shapes = [(1, 1, 1, 0), (2, cfg.max_block_len, 64, 1), (cfg.max_batch_size, cfg.max_block_len, 100, 2)]
    requests = [random_request(cfg, rng, b, tb, n, e) for b, tb, n, e in shapes]
    reference, candidate = OrtPipeline(paths, threads=1), OrtPipeline(GraphPaths(*low), threads=1)
    report = compare_pipelines(reference, candidate, requests, precision, seed, progress=lambda _: None)
    if report.problems:
        raise ParityError(f"the {precision} graphs disagree with the fp32 graphs:\n" + "\n".join(report.problems))
    return report.summary()


def ensure_checkpoint(path: Path) -> None:
    """Train the embedded default if it is absent; any other missing checkpoint is an error."""
    if (path / "model.safetensors").is_file():
        return
    if path.resolve() != DEFAULT_CHECKPOINT.resolve():
        raise ExportError(
            f"no checkpoint at {path} (expected model.safetensors + config.json); pass --checkpoint with a "
            f"folder written by `python -m model.train`, or omit it to use {DEFAULT_CHECKPOINT.relative_to(ROOT)}"
        )
    print(f"no default checkpoint at {path}: training it first (python -m model.train)", flush=True)
    subprocess.run([sys.executable, "-m", "model.train", "--out", str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=program_name("export"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="checkpoint folder (config.json + model.safetensors); default: the embedded small one",
    )
    p.add_argument(
        "--target", default="auto", help="auto (tensorrt if TensorRT and a GPU, else python), " + ", ".join(TARGETS)
    )
    p.add_argument(
        "--cache-dtype",
        default="fp32",
        choices=sorted(CACHE_DTYPES),
        help="dtype of the keys/values passed from user_encoder to item_scorer",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=[x.value for x in Precision],
        help="TensorRT engine precision (tensorrt target only); fp16/bf16 engines are built from a mixed-precision "
        "graph (export/precision.py)",
    )
    p.add_argument(
        "--triton-release",
        default=None,
        metavar="YY.MM",
        help="NGC Triton container the repository is for (nvcr.io/nvidia/tritonserver:YY.MM-py3): every TensorRT "
        "plan must come from the TensorRT it ships; default: the newest known release that ships the TensorRT here",
    )
    p.add_argument(
        "--gpu-budget-gib",
        type=float,
        default=ENGINE_BUDGET_GIB,
        help="GPU memory one engine may use at its profile maxima (default fits a 24 GB GPU); larger limits of "
        "the config are lowered for the tensorrt target and the client chunks",
    )
    p.add_argument("--out", type=Path, default=ROOT / "model_repository", help="model repository to write")
    p.add_argument("--work-dir", type=Path, default=ROOT / "artifacts", help="where ONNX files and engines go")
    p.add_argument("--version", type=int, default=1, help="model version directory to write (rollouts: bump it)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per model instance")
    p.add_argument("--skip-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        # everything that can be refused is refused here, before any work
        target, why = pick_target(a.target)
        if a.precision != "fp32" and target != "tensorrt":
            if a.target != "auto":
                raise ExportError(f"--precision {a.precision} applies to --target tensorrt only, not {target}")
            print(f"note: --precision {a.precision} ignored: the {target} target serves the fp32 graphs", flush=True)
        container = pick_container(target, a.triton_release)
        print(f"target: {target} ({why})", flush=True)
        if container is not None:
            print(f"  for {container.image} (Triton {container.triton}, TensorRT {container.tensorrt})", flush=True)
        print(f"[1/5] checkpoint {a.checkpoint}", flush=True)
        ensure_checkpoint(a.checkpoint)
        model = load_checkpoint(a.checkpoint)
        cfg = model.cfg
        print(
            f"  preset {cfg.name}: d={cfg.d_model} H={cfg.n_heads} L={cfg.n_layers} blocks="
            + ",".join(f"{b.name}:{b.max_len}" for b in cfg.blocks)
            + f" max batch {cfg.max_batch_size}, max candidates {cfg.max_candidates}",
            flush=True,
        )
        serving_cfg = cfg
        if target == "tensorrt":
            serving_cfg, changes = fit_to_gpu(cfg, a.gpu_budget_gib)
            if changes:
                print(
                    f"  limits lowered so each engine fits {a.gpu_budget_gib} GiB at its profile maxima: "
                    f"{', '.join(changes)} (published by the ensemble; the client chunks)",
                    flush=True,
                )
        onnx_dir = a.work_dir / f"{cfg.name}-{a.cache_dtype}"
        print(f"[2/5] ONNX graphs -> {onnx_dir}", flush=True)
        paths = export_graphs(model, onnx_dir, cast(CacheDType, a.cache_dtype))
        print("[3/5] ONNX Runtime vs PyTorch parity", flush=True)
        if a.skip_parity:
            parity = "skipped (--skip-parity)"
        else:
            parity = check_ort_parity(model, paths, cast(CacheDType, a.cache_dtype), shape_grid(cfg)).summary()
        print(f"  {parity}", flush=True)
        files = {USER_ENCODER: paths.user_encoder, ITEM_SCORER: paths.item_scorer}
        if target == "tensorrt" and a.precision != "fp32":
            precision = cast(LowPrecision, a.precision)
            for graph in (USER_ENCODER, ITEM_SCORER):
                files[graph] = onnx_dir / a.precision / f"{graph}.onnx"
                plan = convert_file(getattr(paths, graph), files[graph], precision)
                print(f"  {graph}.onnx -> {a.precision} graph: {plan.summary()}", flush=True)
            low = (files[USER_ENCODER], files[ITEM_SCORER])
            summary = "skipped (--skip-parity)" if a.skip_parity else check_low_precision(paths, low, cfg, a.precision)
            print(f"  {summary}", flush=True)
        if target == "tensorrt":
            print(f"[4/5] TensorRT engines ({a.precision}, strongly typed)", flush=True)
            for graph, onnx_path in list(files.items()):
                plan_path = onnx_path.with_suffix(f".{a.precision}.plan")
                build_engine(
                    onnx_path,
                    plan_path,
                    serving_cfg,
                    graph,
                    a.precision,
                    timing_cache=a.work_dir / "timing.cache",
                    progress=print,
                )
                files[graph] = plan_path
        else:
            print(f"[4/5] TensorRT engines: not built ({target} target)", flush=True)
        print(f"[5/5] model repository -> {a.out}", flush=True)
        record = new_provenance(
            a.out,
            a.checkpoint,
            preset=cfg.name,
            target=target,
            cache_dtype=a.cache_dtype,
            version=a.version,
            target_container=container.image if container is not None else python_target_server(),
        )
        write_repository(
            a.out, serving_cfg, target, files, a.cache_dtype, a.version, a.threads, provenance=record.parameters()
        )
        save_provenance(a.out, record)
        configs = check_repository(a.out, container if target == "tensorrt" else None)
    except TYPED_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    checked = "configs parsed and ensemble wiring checked"
    if target == "tensorrt" and container is not None:
        checked += f"; plans match the TensorRT {container.tensorrt} of {container.release}"
    print(
        f"done in {time.perf_counter() - t0:.0f} s: {len(configs)} models ({', '.join(sorted(configs))}), "
        f"target {target}, cache {a.cache_dtype}, version {a.version}; {checked}. "
        + serve_hint(target, a.out, container),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
