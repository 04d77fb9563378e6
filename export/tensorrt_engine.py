"""ONNX graph -> TensorRT engine (``model.plan``) for the Triton ``tensorrt`` target.

Written against the documented TensorRT 10 Python API and type-checked with
``tensorrt-stubs``. Two halves:

* **Pure logic** (no TensorRT needed, unit-tested everywhere): the optimization
  profile of each graph derived from :class:`~contract.config.AstroConfig`
  (:func:`profile_shapes`), the expected I/O of each graph and the check of a
  parsed network against it (:func:`io_mismatches`), the builder flags of each
  :class:`Precision` (:func:`precision_flags`), which layers stay in fp32 under
  fp16/bf16 (:func:`keep_fp32`) and the JSON written beside every plan
  (:class:`EngineMetadata`).
* **The build** (:func:`build_engine`): imports ``tensorrt`` lazily, so this
  module imports on machines without TensorRT; there it raises
  :class:`TensorRTUnavailable` saying what is missing and how to get it.
  :func:`tensorrt_available` tells ``make export`` whether the ``tensorrt``
  target can be built here.

TensorRT 10 facts this module relies on (see the Python API reference):

* every network is explicit-batch (``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``
  is deprecated and ignored), so ``create_network(0)``;
* INT64 and BOOL are native tensor types: the INT64 id inputs and the BOOL mask
  are engine I/O as they are, with no cast to INT32 (TensorRT 8 needed one);
* precision is "weakly typed" here: ``BuilderFlag.FP16``/``BF16`` let TensorRT
  pick lower-precision kernels, ``OBEY_PRECISION_CONSTRAINTS`` makes the per-layer
  ``ILayer.precision`` / ``set_output_type`` pins binding (TensorRT 10.12 deprecates
  these in favour of strongly typed networks; they still work throughout 10.x);
* ``TF32`` is on by default and would round fp32 matmul inputs to 10-bit
  mantissas, so an ``fp32`` engine clears it.

Shapes: B batch, Nb = cfg.n_blocks, Tb <= cfg.max_block_len, S = Nb*Tb,
L layers, H heads, dh head dim, N <= cfg.max_candidates, T = n_tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from contract.config import AstroConfig
from contract.tensors import (
    BATCH,
    BLOCK_LEN,
    CACHE_DTYPES,
    CANDIDATES,
    GRAPH_IO,
    TENSORS,
    USER_ENCODER,
    USER_KEYS,
    USER_TOKENS,
    USER_VALUES,
    Axis,
    Tensor,
    graph_io,
)

if TYPE_CHECKING:  # only for annotations: the module itself never needs TensorRT to import
    # mypy reads the tensorrt-stubs copy that typings/repair_tensorrt_stubs.py repairs into
    # .venv/typings (mypy_path in pyproject.toml): as published they carry no py.typed marker and
    # do not parse. No ignore here on purpose: without the repaired copy this import fails
    # (import-untyped) instead of silently turning every TensorRT name into Any.
    import tensorrt as trt

log = logging.getLogger(__name__)

Graph = Literal["user_encoder", "item_scorer"]
GRAPHS: tuple[Graph, ...] = get_args(Graph)

INSTALL_HINT = (
    "TensorRT engines need the TensorRT Python package and an NVIDIA GPU: on a GPU host run "
    "`pip install .[gpu]` (the tensorrt wheel fetches its CUDA libraries from pypi.nvidia.com), "
    "or work inside the NGC container "
    "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 / nvcr.io/nvidia/tensorrt:<yy.mm>-py3, which ship it; "
    "elsewhere use the `onnxruntime` or `python` model-repository target"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU for it) is missing on this machine; the message says what to install."""


class EngineBuildError(RuntimeError):
    """TensorRT is present but the engine could not be built; the message names the cause."""


# ---------------------------------------------------------------------------------------
# Optimization profiles: derived only from the config
# ---------------------------------------------------------------------------------------
class ShapeRange(NamedTuple):
    """The (min, opt, max) dims of one input in an optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


class _Dims(NamedTuple):
    """(min, opt, max) of one symbolic dimension."""

    min: int
    opt: int
    max: int


def _range(*dims: _Dims | int) -> ShapeRange:
    """A shape from per-axis dims; a plain int is a static axis (min = opt = max)."""
    ds = [d if isinstance(d, _Dims) else _Dims(d, d, d) for d in dims]
    return ShapeRange(tuple(d.min for d in ds), tuple(d.opt for d in ds), tuple(d.max for d in ds))


def _axis_dims(cfg: AstroConfig) -> dict[str, _Dims]:
    """(min, opt, max) of every dynamic axis of the tensor declarations.

    Minimum 1 everywhere (one user, a history cut to one slot per block, one candidate).
    Maximum: the config's limits, which Triton's ``max_batch_size`` and the client share.
    Opt (the shape TensorRT tunes its kernels for; every shape in [min, max] still runs):

    * B: half of ``max_batch_size``, rounded up: Triton's dynamic batcher fills batches
      partly at moderate load; tuning for the middle of the range hedges both ends.
    * Tb: ``max_block_len``: a request is padded to its longest block, and an active
      user's longest block (the play history) is full, so full Tb is the common case.
    * N: half of ``max_candidates``, rounded up, for the same reason as B.

    S is always Nb * Tb (the encoder flattens Nb blocks of Tb tokens), at every point.
    """
    nb = cfg.n_blocks
    tb = _Dims(1, cfg.max_block_len, cfg.max_block_len)
    return {
        BATCH.symbol: _Dims(1, math.ceil(cfg.max_batch_size / 2), cfg.max_batch_size),
        BLOCK_LEN.symbol: tb,
        USER_TOKENS.symbol: _Dims(nb * tb.min, nb * tb.opt, nb * tb.max),
        CANDIDATES.symbol: _Dims(1, math.ceil(cfg.max_candidates / 2), cfg.max_candidates),
    }


def _ranges(cfg: AstroConfig, tensors: Sequence[Tensor]) -> dict[str, ShapeRange]:
    dims = _axis_dims(cfg)
    return {t.name: _range(*(dims[d.symbol] if isinstance(d, Axis) else d for d in t.dims)) for t in tensors}


def profile_shapes(cfg: AstroConfig, graph: Graph) -> dict[str, ShapeRange]:
    """The optimization profile of ``graph``: (min, opt, max) for every input, from the declarations."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    return _ranges(cfg, graph_io(cfg, graph)[0])


def output_shapes(cfg: AstroConfig, graph: Graph) -> dict[str, ShapeRange]:
    """The shapes each graph's outputs take over the profile (what the next step receives)."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    return _ranges(cfg, graph_io(cfg, graph)[1])


# ---------------------------------------------------------------------------------------
# Expected network I/O, checked right after parsing (names, then dtypes, then shapes)
# ---------------------------------------------------------------------------------------
FLOAT_DTYPES = frozenset({"FLOAT", "HALF", "BF16"})  # TensorRT DataType names
TRT_DTYPE_NAMES = {"int64": "INT64", "bool": "BOOL", "fp32": "FLOAT", "fp16": "HALF"}  # contract -> TensorRT
CACHE_DTYPE_NAMES = {TRT_DTYPE_NAMES[d]: d for d in CACHE_DTYPES}  # DataType name -> the export's cache dtype


def expected_dtypes(graph: Graph) -> dict[str, frozenset[str]]:
    """Allowed TensorRT dtype names of every I/O tensor, from the declarations (the cache: any cache dtype)."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    inputs, outputs = GRAPH_IO[graph]
    decls = [TENSORS[n] for n in (*inputs, *outputs)]
    cache = frozenset(CACHE_DTYPE_NAMES)
    return {t.name: cache if t.dtype == "cache" else frozenset({TRT_DTYPE_NAMES[t.dtype]}) for t in decls}


def shape_mismatches(name: str, declared: Sequence[int], rng: ShapeRange) -> list[str]:
    """Problems of a declared network shape (-1 = dynamic) against the config's range."""
    if len(declared) != len(rng.min):
        return [f"{name}: rank {len(declared)} {tuple(declared)} but the config expects rank {len(rng.min)}"]
    problems = []
    for axis, (d, lo, hi) in enumerate(zip(declared, rng.min, rng.max, strict=True)):
        if d == -1:
            continue
        if lo == hi and d != lo:
            problems.append(f"{name}: axis {axis} is {d} in the ONNX but the config says {lo}")
        elif lo != hi:
            problems.append(
                f"{name}: axis {axis} is static ({d}) in the ONNX but must be dynamic in [{lo}, {hi}]; "
                "re-export the graph with that axis dynamic"
            )
    return problems


def io_mismatches(
    cfg: AstroConfig,
    graph: Graph,
    inputs: Mapping[str, tuple[Sequence[int], str]],
    outputs: Mapping[str, tuple[Sequence[int], str]],
) -> list[str]:
    """Every mismatch between a parsed network's I/O ``{name: (shape, dtype name)}`` and the config.

    Collects all problems (names first, then dtypes, then shapes) instead of stopping at the first.
    """
    want_in, want_out = profile_shapes(cfg, graph), output_shapes(cfg, graph)
    problems: list[str] = []
    for kind, got, want in (("input", inputs, want_in), ("output", outputs, want_out)):
        if missing := sorted(set(want) - set(got)):
            problems.append(f"{graph}: missing {kind}s {missing}")
        if extra := sorted(set(got) - set(want)):
            problems.append(f"{graph}: unexpected {kind}s {extra} (expected {sorted(want)})")
    dtypes = expected_dtypes(graph)
    found = {**inputs, **outputs}
    for name in sorted(found.keys() & dtypes.keys()):
        if found[name][1] not in dtypes[name]:
            problems.append(f"{name}: dtype {found[name][1]} but expected one of {sorted(dtypes[name])}")
    if USER_KEYS in found and USER_VALUES in found and found[USER_KEYS][1] != found[USER_VALUES][1]:
        problems.append(f"{USER_KEYS} is {found[USER_KEYS][1]} but {USER_VALUES} is {found[USER_VALUES][1]}")
    ranges = {**want_in, **want_out}
    for name in sorted(found.keys() & ranges.keys()):
        problems += shape_mismatches(name, found[name][0], ranges[name])
    return problems


# ---------------------------------------------------------------------------------------
# Precision: builder flags and the layers pinned to fp32
# ---------------------------------------------------------------------------------------
class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class PrecisionFlags(NamedTuple):
    """``BuilderFlag`` member names to set and to clear for one precision."""

    set: tuple[str, ...]
    clear: tuple[str, ...]


def precision_flags(precision: Precision | str) -> PrecisionFlags:
    """Builder flags of a precision.

    * fp32: clear TF32 (on by default; it rounds matmul inputs to 10 mantissa bits, ~1e-3
      relative error, which would break fp32 parity at 1e-4).
    * fp16 / bf16: allow that type, and OBEY_PRECISION_CONSTRAINTS so that the fp32 pins of
      :func:`keep_fp32` are binding (without it they are only preferences). TF32 stays
      allowed for the layers left in fp32: the reduced type dominates the error anyway.
    """
    p = Precision(precision)
    if p is Precision.FP32:
        return PrecisionFlags(set=(), clear=("TF32",))
    reduced = "FP16" if p is Precision.FP16 else "BF16"
    return PrecisionFlags(set=(reduced, "OBEY_PRECISION_CONSTRAINTS"), clear=())


# Layer types always kept in fp32 under fp16/bf16 (LayerType names):
#  * SOFTMAX / RAGGED_SOFTMAX: the attention softmax exponentiates logits scaled by
#    1/(sqrt(dh)*tau) with tau down to tau_min = 0.1; exp overflows fp16 above ~11 and its
#    sum loses the small weights of long histories (up to Nb*Tb keys per row);
#  * NORMALIZATION (ONNX opset >= 17 LayerNormalization): the variance is a mean of squares
#    (overflows fp16 for activations above ~256) and eps = 1e-5 is below fp16's normal range.
#    INormalizationLayer already computes in fp32 by default (its ``compute_precision``); the
#    pin also keeps its input and output, the residual stream, in fp32;
#  * REDUCE: sums/means over d_model or S accumulate rounding error in fp16;
#  * SELECT (ONNX Where): builds the additive padding bias and masks the dense reference path.
#    The mask logit itself (model.astro.MASK_LOGIT = -3e4) is chosen finite in fp16 (whose
#    range ends at -65504), so the bias Add, an ELEMENTWISE layer that may run in fp16, never
#    turns a fully masked row (an empty block) into -inf and a NaN softmax.
FP32_LAYER_TYPES = frozenset({"SOFTMAX", "RAGGED_SOFTMAX", "NORMALIZATION", "REDUCE", "SELECT"})
# Element-wise layer types kept in fp32 only when their (ONNX node) name shows they belong
# to a normalisation, a softmax or an exp/log/pow/sqrt chain: a LayerNorm or softmax that
# an exporter decomposed into ReduceMean/Sub/Pow/Sqrt/Div or Exp/ReduceSum/Div, a softplus
# or sigmoid. torch's dynamo exporter names most nodes generically (``node_Add_12``), so for
# our graphs this is a safety net: what must stay fp32 there is pinned by type above.
NAME_GATED_LAYER_TYPES = frozenset({"UNARY", "ELEMENTWISE", "ACTIVATION"})
FP32_NAME_TOKENS = frozenset(
    {
        "exp",
        "log",
        "pow",
        "sqrt",
        "rsqrt",
        "reciprocal",
        "softmax",
        "logsoftmax",
        "softplus",
        "sigmoid",
        "norm",
        "layernorm",
        "layernormalization",
        "rmsnorm",
        "normalization",
    }
)
_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")


def _name_tokens(name: str) -> list[str]:
    """'/layers.0/norm1/ReduceMean_3' -> ['layers', '', 'norm', 'reducemean'] (trailing digits dropped)."""
    return [t.rstrip("0123456789") for t in _TOKEN_SPLIT.split(name.lower())]


def keep_fp32(layer_type_name: str, layer_name: str) -> bool:
    """Whether a layer must compute in fp32 in an fp16/bf16 engine (see the tables above).

    ``layer_type_name`` is ``ILayer.type.name`` (e.g. "SOFTMAX"); ``layer_name`` is the layer's
    name, which the ONNX parser derives from the ONNX node name (e.g. "/layers.0/norm1/Pow").
    Matmuls, GELU, embeddings and casts stay in the reduced type: that is where the speed is.
    The build applies the pin only to layers with floating-point outputs (an INT64 ReduceSum,
    e.g. the age bucketing, has no fp32 kernel to pin to).
    """
    if layer_type_name in FP32_LAYER_TYPES:
        return True
    if layer_type_name not in NAME_GATED_LAYER_TYPES:
        return False
    tokens = _name_tokens(layer_name)
    return any(t in FP32_NAME_TOKENS or t.startswith("reduce") for t in tokens)


def min_compute_capability(precision: Precision | str) -> tuple[int, int]:
    """Oldest GPU that runs the precision's kernels: bf16 needs Ampere (8.0); TensorRT 10 needs 7.5+."""
    return (8, 0) if Precision(precision) is Precision.BF16 else (7, 5)


# ---------------------------------------------------------------------------------------
# Metadata written beside each plan
# ---------------------------------------------------------------------------------------
def metadata_path(plan_path: Path) -> Path:
    """``.../model.plan`` -> ``.../model.plan.json``."""
    return plan_path.with_name(plan_path.name + ".json")


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine was built from, on what, and how: a plan only runs on the GPU
    architecture and TensorRT version that built it, so these are checked before serving."""

    graph: str
    config_name: str
    precision: str
    cache_dtype: str  # "fp32" | "fp16": dtype of user_keys/user_values, read from the ONNX
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    onnx_file: str
    onnx_sha256: str
    built_at: str  # ISO-8601, UTC
    build_seconds: float
    workspace_gib: float
    profiles: dict[str, ShapeRange]  # the one optimization profile (index 0)
    io_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # engine I/O, DataType names
    fp32_layers: tuple[str, ...] = ()  # layers pinned by keep_fp32

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profiles"] = {k: v.to_dict() for k, v in self.profiles.items()}
        d["fp32_layers"] = list(self.fp32_layers)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown engine metadata keys {unknown}; known keys: {sorted(known)}")
        kw = dict(d)
        kw["profiles"] = {k: ShapeRange.from_dict(v) for k, v in d["profiles"].items()}
        kw["fp32_layers"] = tuple(d.get("fp32_layers", ()))
        kw["io_dtypes"] = dict(d.get("io_dtypes", {}))
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> EngineMetadata:
        return cls.from_dict(json.loads(text))

    def write(self, plan_path: Path) -> Path:
        path = metadata_path(plan_path)
        _atomic_write(path, (self.to_json() + "\n").encode())
        return path

    @classmethod
    def read(cls, plan_path: Path) -> EngineMetadata:
        return cls.from_json(metadata_path(plan_path).read_text())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a truncated plan/cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Is TensorRT usable here?
# ---------------------------------------------------------------------------------------
def _require_tensorrt() -> str:
    """Import the real TensorRT or raise :class:`TensorRTUnavailable`; returns its version."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTUnavailable(f"`import tensorrt` failed ({type(e).__name__}: {e}). {INSTALL_HINT}") from e
    # `tensorrt-stubs` installs a bare `tensorrt/` folder of .pyi files, which Python then
    # imports as an empty namespace package: that is not TensorRT.
    if not hasattr(tensorrt, "Builder"):
        where = ", ".join(getattr(tensorrt, "__path__", [])) or "?"
        raise TensorRTUnavailable(
            f"`import tensorrt` found only a namespace package without the TensorRT API at {where} "
            f"(type stubs such as tensorrt-stubs, not the library). {INSTALL_HINT}"
        )
    return str(tensorrt.__version__)


def _gpu_identity() -> tuple[str, str] | None:
    """(name, compute capability "M.m") of CUDA device 0, or None when no GPU is visible.

    Asks PyTorch first (the [model] extra), then ``nvidia-smi``; TensorRT's Python API does
    not expose device properties.
    """
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass  # no PyTorch: nvidia-smi below decides
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    # compute_cap is a newer query field (drivers >= 510); older drivers still answer for name
    for fields in ("name,compute_cap", "name"):
        try:
            out = subprocess.run(
                [smi, f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("`nvidia-smi --query-gpu=%s` failed: %s", fields, e)
            continue
        if out:
            first = [part.strip() for part in out.splitlines()[0].split(",")]
            return first[0], (first[1] if len(first) > 1 else "unknown")
    return None


def _parse_compute_capability(cc: str) -> tuple[int, int] | None:
    """ "9.0" -> (9, 0); None when unknown (e.g. "[N/A]" from an old driver)."""
    major, _, minor = cc.partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def tensorrt_available() -> tuple[bool, str]:
    """Whether TensorRT engines can be built here, with a human reason either way.

    Needs a real ``import tensorrt`` and a visible CUDA GPU. ``make export`` picks the
    ``tensorrt`` target only when this is true; the TensorRT tests skip with the reason.
    """
    try:
        version = _require_tensorrt()
    except TensorRTUnavailable as e:
        return False, str(e)
    gpu = _gpu_identity()
    if gpu is None:
        return False, (
            f"TensorRT {version} is installed but no CUDA GPU is visible "
            f"(torch.cuda.is_available() is false and nvidia-smi lists none). {INSTALL_HINT}"
        )
    return True, f"TensorRT {version} with {gpu[0]} (compute capability {gpu[1]})"


# ---------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------
def _make_logger(progress: Callable[[str], None]) -> tuple[trt.ILogger, list[str]]:
    """A TensorRT logger that forwards warnings/errors to ``progress`` and keeps the errors."""
    import tensorrt as trt

    errors: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # required by the bindings for Python subclasses

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                errors.append(msg)
            if severity <= trt.ILogger.Severity.WARNING:
                progress(f"[TensorRT {severity.name}] {msg}")

    return _Logger(), errors


def _make_progress_monitor(progress: Callable[[str], None]) -> trt.IProgressMonitor:
    """An ``IProgressMonitor`` (TensorRT >= 10.0) that reports phases and ~10% steps."""
    import tensorrt as trt

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # required by the bindings for Python subclasses
            self._lock = threading.Lock()  # TensorRT calls from several threads
            self._phases: dict[str, tuple[int, int, float]] = {}  # name -> (depth, steps, start)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
                self._phases[phase_name] = (depth, num_steps, time.monotonic())
            progress(f"{'  ' * depth}{phase_name}: {num_steps} step(s)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                depth, steps, _ = self._phases.get(phase_name, (0, 0, 0.0))
            stride = max(1, steps // 10)
            if steps >= 10 and (step + 1) % stride == 0 and step + 1 < steps:
                progress(f"{'  ' * depth}{phase_name}: {step + 1}/{steps}")
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                depth, _, start = self._phases.pop(phase_name, (0, 0, time.monotonic()))
            progress(f"{'  ' * depth}{phase_name}: done in {time.monotonic() - start:.1f} s")

    return _Monitor()


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    cfg: AstroConfig,
    graph: Graph,
    precision: Precision | str = Precision.FP32,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
    progress: Callable[[str], None] = log.info,
) -> EngineMetadata:
    """Build ``onnx_path`` into a serialized engine at ``plan_path`` (+ ``<plan>.json`` metadata).

    One optimization profile from :func:`profile_shapes`; precision flags from
    :func:`precision_flags`, and under fp16/bf16 the :func:`keep_fp32` layers pinned to fp32.
    ``timing_cache``, when given, is loaded if it exists and saved back after the build, so
    rebuilding on the same GPU skips most kernel timing. ``workspace_gib`` caps the scratch
    memory a layer's kernels may use. Raises :class:`TensorRTUnavailable` without TensorRT
    or a GPU, :class:`EngineBuildError` when parsing, the I/O check or the build fails.
    """
    p = Precision(precision)
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX graph {onnx_path} does not exist; run the ONNX export first")
    if workspace_gib <= 0:
        raise ValueError(f"workspace_gib={workspace_gib} must be > 0")
    version = _require_tensorrt()
    gpu = _gpu_identity()
    if gpu is None:
        raise TensorRTUnavailable(f"TensorRT {version} is installed but no CUDA GPU is visible. {INSTALL_HINT}")
    gpu_name, cc = gpu
    need = min_compute_capability(p)
    if (have := _parse_compute_capability(cc)) is not None and have < need:
        raise EngineBuildError(
            f"{p} engines need compute capability >= {need[0]}.{need[1]}, but {gpu_name} is {cc}; "
            "choose another precision"
        )

    import tensorrt as trt

    t0 = time.monotonic()
    logger, errors = _make_logger(progress)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: always explicit batch, weakly typed
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {onnx_path}")
    parsed = parser.parse_from_file(str(onnx_path))  # resolves external weight files beside it
    parse_errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not parsed:
        listing = "\n  ".join(parse_errors or errors or ["(the parser reported no detail)"])
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  {listing}")
    for message in parse_errors:  # parsed anyway: report, do not hide
        progress(f"[ONNX parser] {message}")

    def io(tensors: Sequence[trt.ITensor]) -> dict[str, tuple[tuple[int, ...], str]]:
        # Dims supports len() and indexing (the stubs declare no __iter__)
        return {t.name: (tuple(t.shape[k] for k in range(len(t.shape))), t.dtype.name) for t in tensors}

    net_in = io([network.get_input(i) for i in range(network.num_inputs)])
    net_out = io([network.get_output(i) for i in range(network.num_outputs)])
    if problems := io_mismatches(cfg, graph, net_in, net_out):
        raise EngineBuildError(
            f"{onnx_path} does not match config {cfg.name!r} for graph {graph}:\n  " + "\n  ".join(problems)
        )
    kv_dtype = (net_out if graph == USER_ENCODER else net_in)[USER_KEYS][1]
    cache_dtype = CACHE_DTYPE_NAMES[kv_dtype]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    flag_of = {
        "FP16": trt.BuilderFlag.FP16,
        "BF16": trt.BuilderFlag.BF16,
        "TF32": trt.BuilderFlag.TF32,
        "OBEY_PRECISION_CONSTRAINTS": trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS,
    }
    flags = precision_flags(p)
    for name in flags.set:
        config.set_flag(flag_of[name])
    for name in flags.clear:
        config.clear_flag(flag_of[name])
    if p is Precision.FP16 and not builder.platform_has_fast_fp16:
        progress(f"warning: {gpu_name} has no fast fp16; the fp16 engine may be no faster than fp32")

    pinned: list[str] = []
    if p is not Precision.FP32:
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            label = f"{layer.name} {getattr(layer, 'metadata', '')}"  # metadata: "[ONNX Layer: <node>]"
            if not keep_fp32(layer.type.name, label):
                continue
            outs = [layer.get_output(j) for j in range(layer.num_outputs)]
            if not outs or any(t.dtype.name not in FLOAT_DTYPES for t in outs):
                continue  # integer/bool layers have no fp32 kernel to pin to
            layer.precision = trt.float32
            for j, t in enumerate(outs):
                if not t.is_network_output:  # network outputs keep the dtype the ONNX declares
                    layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
        progress(f"{len(pinned)} of {network.num_layers} layers pinned to fp32 under {p}")

    profile = builder.create_optimization_profile()
    shapes = profile_shapes(cfg, graph)
    for name, rng in shapes.items():
        profile.set_shape(name, trt.Dims(list(rng.min)), trt.Dims(list(rng.opt)), trt.Dims(list(rng.max)))
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimization profile {shapes}")

    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            progress(f"timing cache {timing_cache} is unreadable or from another GPU/TensorRT; starting afresh")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        else:
            progress(f"timing cache {timing_cache}: {'loaded' if blob else 'new'}")

    monitor = _make_progress_monitor(progress)  # held here: it must outlive the build
    config.progress_monitor = monitor
    progress(f"building {graph} ({p}, cache {cache_dtype}) for {gpu_name}; this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:  # the API returns None on failure; the logger holds the reason
        raise EngineBuildError(f"TensorRT failed to build {graph} from {onnx_path}:\n  " + "\n  ".join(errors))
    plan = bytes(serialized)
    _atomic_write(plan_path, plan)
    if timing_cache is not None:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))

    # Deserialize once: proves the plan loads, and records the engine's real I/O dtypes.
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError(f"the plan just written to {plan_path} does not deserialize:\n  " + "\n  ".join(errors))
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io_dtypes = {n: engine.get_tensor_dtype(n).name for n in names}

    meta = EngineMetadata(
        graph=graph,
        config_name=cfg.name,
        precision=str(p),
        cache_dtype=cache_dtype,
        tensorrt_version=version,
        gpu_name=gpu_name,
        compute_capability=cc,
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - t0, 3),
        workspace_gib=workspace_gib,
        profiles=shapes,
        io_dtypes=io_dtypes,
        fp32_layers=tuple(pinned),
    )
    meta_path = meta.write(plan_path)
    progress(f"wrote {plan_path} ({len(plan) / 2**20:.1f} MiB) and {meta_path.name} in {meta.build_seconds:.1f} s")
    return meta


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _load_config(spec: str) -> AstroConfig:
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return AstroConfig.from_json(path.read_text())
    return AstroConfig.from_name(spec)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="only report whether TensorRT + a GPU are usable (exit 0/1)")
    ap.add_argument("--onnx", type=Path, help="ONNX graph to build (user_encoder.onnx or item_scorer.onnx)")
    ap.add_argument("--plan", type=Path, help="where to write the engine, e.g. .../user_encoder/1/model.plan")
    ap.add_argument("--graph", choices=GRAPHS, help="which graph the ONNX holds (selects the profile)")
    ap.add_argument("--config", default="small", help="preset name (tiny/small/paper) or an AstroConfig .json")
    ap.add_argument("--precision", choices=[p.value for p in Precision], default="fp16", help="engine precision")
    ap.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to load and update")
    ap.add_argument("--workspace-gib", type=float, default=4.0, help="max scratch memory per layer, GiB")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    ok, reason = tensorrt_available()
    if args.check:
        print(reason)
        return 0 if ok else 1
    if args.onnx is None or args.plan is None or args.graph is None:
        ap.error("--onnx, --plan and --graph are required unless --check")
    try:
        build_engine(
            args.onnx,
            args.plan,
            _load_config(args.config),
            args.graph,
            args.precision,
            args.timing_cache,
            args.workspace_gib,
            progress=print,
        )
    except (TensorRTUnavailable, EngineBuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
