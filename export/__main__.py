"""``python -m export``: checkpoint -> ONNX -> (TensorRT) -> checked Triton model repository.

    python -m export                       # the embedded small checkpoint, target picked for this host
    python -m export --target onnxruntime  # force a target
    python -m export --cache-dtype fp16    # halve the keys/values bytes between ensemble steps

Steps, each reported as it runs: load (or first train) the checkpoint, export both graphs
to ONNX (checker + shape inference), ONNX Runtime vs PyTorch parity over a grid of shapes,
TensorRT engines (tensorrt target), write the repository, validate every config.pbtxt
and the ensemble wiring, then print a summary.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

from contract.tensors import CACHE_DTYPES, ITEM_SCORER, USER_ENCODER, CacheDType
from export.onnx_graphs import export_graphs
from export.parity import check_ort_parity, shape_grid
from export.repository import TARGETS, Target, write_repository
from export.repository_check import check_repository
from export.tensorrt_engine import Graph, Precision, build_engine, tensorrt_available
from model.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


class ExportError(RuntimeError):
    """A bad export request; the message says what to do."""


def pick_target(requested: str) -> tuple[Target, str]:
    if requested != "auto":
        if requested not in TARGETS:
            raise ExportError(f"unknown target {requested!r}; choose auto or one of {', '.join(TARGETS)}")
        return requested, "forced with --target"
    ok, reason = tensorrt_available()
    if ok:
        return "tensorrt", reason
    return "python", f"{reason}; serving the ONNX graphs through Triton's Python backend instead"


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
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        help="TensorRT engine precision (tensorrt target only)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "model_repository", help="model repository to write")
    p.add_argument("--work-dir", type=Path, default=ROOT / "artifacts", help="where ONNX files and engines go")
    p.add_argument("--version", type=int, default=1, help="model version directory to write (rollouts: bump it)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per model instance")
    p.add_argument("--skip-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        target, why = pick_target(a.target)
        print(f"target: {target} ({why})", flush=True)
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
        if target == "tensorrt":
            print(f"[4/5] TensorRT engines ({a.precision})", flush=True)
            for graph, onnx_path in list(files.items()):
                plan = onnx_path.with_suffix(f".{a.precision}.plan")
                build_engine(
                    onnx_path,
                    plan,
                    cfg,
                    cast(Graph, graph),
                    a.precision,
                    timing_cache=a.work_dir / "timing.cache",
                    progress=print,
                )
                files[graph] = plan
        else:
            print(f"[4/5] TensorRT engines: not built ({target} target)", flush=True)
        print(f"[5/5] model repository -> {a.out}", flush=True)
        write_repository(a.out, cfg, target, files, a.cache_dtype, a.version, a.threads)
        configs = check_repository(a.out)
    except (ExportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"done in {time.perf_counter() - t0:.0f} s: {len(configs)} models ({', '.join(sorted(configs))}), "
        f"target {target}, cache {a.cache_dtype}, version {a.version}; configs parsed and ensemble wiring "
        f"checked. Serve with `make serve`.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
