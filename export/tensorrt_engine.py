"""ONNX graph -> TensorRT engine (``model.plan``) for the Triton ``tensorrt`` target.

Written against the TensorRT Python API of the supported versions, ``>= 10.12, < 12``
(``export/tensorrt_versions.py``), and type-checked with mypy against ``tensorrt-stubs``
cut down to the API those versions share (``typings/repair_tensorrt_stubs.py``). Two halves:

* **Pure logic** (no TensorRT needed, unit-tested everywhere): the optimization profile of
  each graph derived from :class:`~contract.config.AstroConfig` (:func:`profile_shapes`), the
  expected I/O of each graph and the check of a parsed network against it
  (:func:`io_mismatches`), the network and builder flags (:data:`NETWORK_FLAGS`,
  :func:`builder_flags`), the GPU-memory arithmetic that bounds the profiles
  (:func:`memory_estimate`, :func:`fit_to_gpu`) and the JSON written beside every plan
  (:class:`EngineMetadata`).
* **The build** (:func:`build_engine`): imports ``tensorrt`` lazily, so this module imports on
  machines without TensorRT; there it raises :class:`TensorRTUnavailable` in one sentence.
  :func:`tensorrt_available` tells ``python -m export`` whether the ``tensorrt`` target can be
  built here.

TensorRT facts this module relies on:

* every network is **strongly typed**: ``create_network(1 << STRONGLY_TYPED)``. TensorRT 10.12
  deprecates the weakly typed API and TensorRT 11 removes it (``BuilderFlag.FP16/BF16/
  OBEY_PRECISION_CONSTRAINTS``, ``ILayer.precision``, ``ILayer.set_output_type``,
  ``Builder.platform_has_fast_fp16``) and ignores the flag (always strongly typed), so this one
  path serves both. The precision of every tensor comes from the ONNX graph: an fp16/bf16 engine
  is built from the mixed-precision graph of ``export/precision.py`` (fp32 islands for
  normalisation, softmax and reductions set in the graph), and the build refuses a graph whose
  recorded precision differs from the one asked for;
* networks are explicit-batch; INT64 and BOOL are native tensor types, so the INT64 id inputs
  and the BOOL mask are engine I/O as they are;
* ``BuilderFlag.TF32`` exists in both and is on by default; it would round fp32 matmul inputs to
  10-bit mantissas, so an ``fp32`` engine clears it.

Polygraphy (``polygraphy.backend.trt``: ``network_from_onnx_path(..., strongly_typed=True)``,
``CreateConfig(profiles=...)``, ``engine_from_network``; ``Comparator`` over TensorRT and ONNX
Runtime runners) was weighed and not used: the build here is ~60 lines, most of them the checks
and metadata Polygraphy would not do (I/O against the config, graph precision, timing cache,
progress), its comparator runs one graph at a time where our parity chains encoder -> scorer the
way the ensemble does, and it would be one more package to keep in step with TensorRT 11.

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

from contract.config import AstroConfig, ConfigError
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
from export.tensorrt_versions import SUPPORTED, TensorRTVersionError, require_supported

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
    f"on a GPU host `pip install '.[gpu]'` (TensorRT {SUPPORTED}) or run inside "
    "nvcr.io/nvidia/tritonserver:<yy.mm>-py3; elsewhere use --target onnxruntime or python"
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
# Precision: strongly typed networks, one builder flag
# ---------------------------------------------------------------------------------------
class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


NETWORK_FLAGS = ("STRONGLY_TYPED",)  # NetworkDefinitionCreationFlag members set for every network
# The weakly typed API: deprecated in TensorRT 10.12, removed in 11. Never used here
# (tests/test_tensorrt_logic.py reads this module's source for them; the stubs mypy reads lack them).
REMOVED_IN_11 = (
    "BuilderFlag.FP16",
    "BuilderFlag.BF16",
    "BuilderFlag.INT8",
    "BuilderFlag.FP8",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "platform_has_fast_fp16",
    "set_output_type",
    ".precision =",
)


class PrecisionFlags(NamedTuple):
    """``BuilderFlag`` member names to set and to clear for one precision."""

    set: tuple[str, ...]
    clear: tuple[str, ...]


def builder_flags(precision: Precision | str) -> PrecisionFlags:
    """Builder flags of a precision, on a strongly typed network.

    * fp32: clear TF32 (on by default; it rounds matmul inputs to 10 mantissa bits, ~1e-3
      relative error, which would break fp32 parity at 1e-4).
    * fp16 / bf16: none. The reduced type is in the ONNX graph (``export/precision.py``); the
      fp32 islands there compute in fp32 with TF32 allowed, which only touches fp32 matmuls,
      and those islands hold none.
    """
    p = Precision(precision)
    return PrecisionFlags(set=(), clear=("TF32",) if p is Precision.FP32 else ())


def min_compute_capability(precision: Precision | str) -> tuple[int, int]:
    """Oldest GPU that runs the precision's kernels: bf16 needs Ampere (8.0); TensorRT 10 needs 7.5+."""
    return (8, 0) if Precision(precision) is Precision.BF16 else (7, 5)


# ---------------------------------------------------------------------------------------
# GPU memory at the profile maxima: the arithmetic that bounds the profiles
# ---------------------------------------------------------------------------------------
GiB = 1 << 30
GPU_MEMORY_GIB = 22.5  # a "24 GB" card (L4, A10, RTX 4090) as CUDA counts it: about 23,000 MiB
RUNTIME_RESERVE_GIB = 1.5  # CUDA context, cuBLAS/cuDNN handles, the Triton server itself
DEFAULT_WORKSPACE_GIB = 2.0  # scratch cap per engine (MemoryPoolType.WORKSPACE)
ENGINE_BUDGET_GIB = 6.0  # activations + I/O of one engine at its profile maximum
FLOAT_BYTES = 4  # estimates are for fp32 engines; fp16/bf16 ones need about half the float bytes
INT_BYTES = 8  # int64 ids, timestamps and buckets
# Unfused upper bounds of what one layer keeps alive at once (TensorRT reuses memory across
# layers, so the peak is one layer's working set plus the graph's inputs and outputs):
ATTENTION_COPIES = 4  # logits, relative bias, logits + bias/mask, softmax probabilities
FFN_COPIES = 2  # the FFN hidden layer before and after GELU
HIDDEN_COPIES = 4  # residual stream, its LayerNorm, attention output, FFN output


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one engine needs at one shape (activations of its largest layer plus its I/O)."""

    graph: str
    shape: tuple[int, int, int]  # (B, Tb, N)
    io: int  # graph inputs and outputs, the key/value cache in fp32
    attention: int  # scorer: [B, Nb, H, N, Tb+1] per copy; encoder: [B, Nb, H, Tb, Tb] (+ int64 buckets)
    ffn: int  # [B, Nb, tokens, ffn_mult * d] per copy
    hidden: int  # [B, Nb, tokens, d] per copy (+ the BGF's [B, N, H, Nb, Nb] in the scorer)

    @property
    def total(self) -> int:
        return self.io + self.attention + self.ffn + self.hidden

    def describe(self) -> str:
        b, tb, n = self.shape
        return (
            f"{self.graph} at B={b} Tb={tb} N={n}: {self.total / GiB:.2f} GiB (attention {self.attention / GiB:.2f}, "
            f"FFN {self.ffn / GiB:.2f}, hidden {self.hidden / GiB:.2f}, I/O {self.io / GiB:.2f})"
        )


def memory_estimate(cfg: AstroConfig, graph: Graph, batch: int, block_len: int, candidates: int) -> MemoryEstimate:
    """Bytes ``graph`` needs for a request of B=``batch`` users, Tb=``block_len``, N=``candidates``."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    b, nb, tb, n = batch, cfg.n_blocks, block_len, candidates
    h, d, f = cfg.n_heads, cfg.d_model, FLOAT_BYTES
    cache = 2 * b * cfg.n_layers * h * nb * tb * cfg.head_dim * f + b * nb * tb  # keys, values, bool mask
    if graph == USER_ENCODER:
        tokens = tb
        io = cache + 4 * b * nb * tb * INT_BYTES + b * INT_BYTES
        attention = ATTENTION_COPIES * b * nb * h * tb * tb * f + 2 * b * nb * tb * tb * INT_BYTES
        bgf = 0
    else:
        tokens = n
        io = cache + b * n * INT_BYTES + b * nb * tb * INT_BYTES + 2 * b * INT_BYTES + b * n * cfg.n_tasks * f
        attention = ATTENTION_COPIES * b * nb * h * n * (tb + 1) * f
        bgf = ATTENTION_COPIES * b * n * h * nb * nb * f
    ffn = FFN_COPIES * b * nb * tokens * cfg.ffn_mult * d * f
    hidden = HIDDEN_COPIES * b * nb * tokens * d * f + bgf
    return MemoryEstimate(graph, (b, tb, n), io, attention, ffn, hidden)


def weight_bytes(cfg: AstroConfig) -> int:
    """fp32 weights of both engines: the item embedding in each graph, per-block layer stacks."""
    layers = cfg.n_blocks * cfg.n_layers * (4 + 2 * cfg.ffn_mult) * cfg.d_model**2  # qkv, out, FFN in/out
    return 2 * FLOAT_BYTES * (cfg.item_buckets * cfg.d_model + layers)


def profile_max_estimates(cfg: AstroConfig) -> dict[str, MemoryEstimate]:
    """Each graph's estimate at the config's (= the profile's) maxima."""
    return {g: memory_estimate(cfg, g, cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates) for g in GRAPHS}


def gpu_bytes(cfg: AstroConfig, workspace_gib: float = DEFAULT_WORKSPACE_GIB) -> int:
    """Everything on the GPU with both engines at their profile maxima at once (the ensemble
    pipelines them): their working sets, one workspace each, the weights and the runtime."""
    engines = sum(e.total for e in profile_max_estimates(cfg).values())
    return int(engines + 2 * workspace_gib * GiB + weight_bytes(cfg) + RUNTIME_RESERVE_GIB * GiB)


def fit_to_gpu(cfg: AstroConfig, budget_gib: float = ENGINE_BUDGET_GIB) -> tuple[AstroConfig, list[str]]:
    """``cfg`` with ``max_candidates`` (then ``max_batch_size``) lowered until each engine's working
    set at the profile maxima fits ``budget_gib``; returns it and a line per change.

    The lowered limits are the ones the ``tensorrt`` repository publishes (the ensemble's
    ``max_candidates`` / ``max_batch_size``), so the client chunks longer candidate lists and
    larger batches: nothing is refused that the old limits allowed. ``max_candidates`` goes down to
    a multiple of 64 (kernel-friendly) before the batch is halved.
    """
    budget = int(budget_gib * GiB)
    batch, n = cfg.max_batch_size, cfg.max_candidates

    def fits(b: int, c: int) -> bool:
        return all(memory_estimate(cfg, g, b, cfg.max_block_len, c).total <= budget for g in GRAPHS)

    while not fits(batch, n):
        if memory_estimate(cfg, "user_encoder", batch, cfg.max_block_len, 1).total <= budget:
            # the largest multiple of 64 (or any N below 64) that fits at this batch
            step = 64 if n > 64 else 1
            best = next((c for c in range(n - n % step or n, 0, -step) if fits(batch, c)), 0)
            if best:
                n = best
                break
        if batch == 1:
            raise ValueError(
                f"config {cfg.name!r} does not fit {budget_gib} GiB per engine even at batch 1 and 1 candidate: "
                + memory_estimate(cfg, "user_encoder", 1, cfg.max_block_len, 1).describe()
            )
        batch = max(1, batch // 2)
    changes = [
        f"{field} {old} -> {new}"
        for field, old, new in (
            ("max_candidates", cfg.max_candidates, n),
            ("max_batch_size", cfg.max_batch_size, batch),
        )
        if old != new
    ]
    if not changes:
        return cfg, []
    return cfg.replace(max_candidates=n, max_batch_size=batch), changes


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
    fp32_nodes: tuple[str, ...] = ()  # the ONNX graph's fp32 islands (export/precision.py) in a low-precision engine
    network: str = "strongly typed"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profiles"] = {k: v.to_dict() for k, v in self.profiles.items()}
        d["fp32_nodes"] = list(self.fp32_nodes)
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
        kw["fp32_nodes"] = tuple(d.get("fp32_nodes", ()))
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
    """Import the real TensorRT or raise :class:`TensorRTUnavailable`; returns its (supported) version."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TensorRTUnavailable(f"no TensorRT here (`import tensorrt`: {first}); {INSTALL_HINT}") from e
    # A bare `tensorrt/` folder of type stubs imports as an empty namespace package: not TensorRT.
    # (The project installs its stubs outside site-packages, .venv/typings, so this is someone else's.)
    if not hasattr(tensorrt, "Builder"):
        raise TensorRTUnavailable(f"`import tensorrt` found type stubs, not TensorRT; {INSTALL_HINT}")
    version = str(tensorrt.__version__)
    try:
        require_supported(version)
    except TensorRTVersionError as e:
        raise TensorRTUnavailable(str(e)) from None
    return version


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


def installed_tensorrt() -> str:
    """The version of the supported TensorRT installed here; :class:`TensorRTUnavailable` otherwise."""
    return _require_tensorrt()


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
        return False, f"TensorRT {version} is installed but no CUDA GPU is visible (PyTorch and nvidia-smi see none)"
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


def onnx_precision(onnx_path: Path) -> tuple[str, tuple[str, ...]]:
    """(precision recorded in the ONNX graph, its fp32-island node names) via ``export/precision.py``."""
    import onnx

    from export.precision import fp32_islands, graph_precision

    model = onnx.load(str(onnx_path), load_external_data=False)
    return graph_precision(model), tuple(fp32_islands(model))


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    cfg: AstroConfig,
    graph: Graph,
    precision: Precision | str = Precision.FP32,
    timing_cache: Path | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    progress: Callable[[str], None] = log.info,
) -> EngineMetadata:
    """Build ``onnx_path`` into a serialized engine at ``plan_path`` (+ ``<plan>.json`` metadata).

    A strongly typed network (:data:`NETWORK_FLAGS`): the engine computes in the types the ONNX
    graph holds, so an fp16/bf16 engine needs the graph ``export/precision.py`` converted to that
    precision (its precision is recorded in the graph; a mismatch is an :class:`EngineBuildError`).
    One optimization profile from :func:`profile_shapes` (pass a config already bounded by
    :func:`fit_to_gpu`); builder flags from :func:`builder_flags`. ``timing_cache``, when given, is
    loaded if it exists and saved back after the build, so rebuilding on the same GPU skips most
    kernel timing. ``workspace_gib`` caps the scratch memory a layer's kernels may use. Raises
    :class:`TensorRTUnavailable` without a supported TensorRT or a GPU, :class:`EngineBuildError`
    when the graph's precision, parsing, the I/O check or the build fails.
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
        raise TensorRTUnavailable(f"TensorRT {version} is installed but no CUDA GPU is visible; {INSTALL_HINT}")
    gpu_name, cc = gpu
    need = min_compute_capability(p)
    if (have := _parse_compute_capability(cc)) is not None and have < need:
        raise EngineBuildError(
            f"{p} engines need compute capability >= {need[0]}.{need[1]}, but {gpu_name} is {cc}; "
            "choose another precision"
        )
    graph_prec, fp32_nodes = onnx_precision(onnx_path)
    if graph_prec != p:
        raise EngineBuildError(
            f"{onnx_path} is a {graph_prec} graph but a {p} engine was asked for: strongly typed engines compute "
            f"in the graph's types; convert it first (`export.precision.convert_file(src, dst, '{p}')`)"
            if p is not Precision.FP32
            else f"{onnx_path} is a {graph_prec} graph but an fp32 engine was asked for: build from the fp32 export"
        )

    import tensorrt as trt

    t0 = time.monotonic()
    logger, errors = _make_logger(progress)
    builder = trt.Builder(logger)
    # TensorRT 11 accepts and ignores STRONGLY_TYPED (always strongly typed there); 10.12+ needs it
    network_flag = {"STRONGLY_TYPED": trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED}
    network = builder.create_network(sum(1 << int(network_flag[name]) for name in NETWORK_FLAGS))
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {onnx_path} ({graph_prec} graph, strongly typed network)")
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
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * GiB))
    flags, flag_of = builder_flags(p), {"TF32": trt.BuilderFlag.TF32}
    for name in flags.set:
        config.set_flag(flag_of[name])
    for name in flags.clear:
        config.clear_flag(flag_of[name])

    profile = builder.create_optimization_profile()
    shapes = profile_shapes(cfg, graph)
    for name, rng in shapes.items():
        profile.set_shape(name, trt.Dims(list(rng.min)), trt.Dims(list(rng.opt)), trt.Dims(list(rng.max)))
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimization profile {shapes}")
    progress(memory_estimate(cfg, graph, cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates).describe())

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
    progress(f"building {graph} ({p}, cache {cache_dtype}) for {gpu_name} with TensorRT {version}; this takes a while")
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
        fp32_nodes=fp32_nodes,
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
    ap.add_argument("--onnx", type=Path, help="ONNX graph to build (for fp16/bf16: the export/precision.py graph)")
    ap.add_argument("--plan", type=Path, help="where to write the engine, e.g. .../user_encoder/1/model.plan")
    ap.add_argument("--graph", choices=GRAPHS, help="which graph the ONNX holds (selects the profile)")
    ap.add_argument("--config", default="small", help="preset name or an AstroConfig .json")
    ap.add_argument("--precision", choices=[p.value for p in Precision], default="fp32", help="engine precision")
    ap.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to load and update")
    ap.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB, help="max scratch memory, GiB")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    ok, reason = tensorrt_available()
    if args.check:
        print(reason)
        return 0 if ok else 1
    if args.onnx is None or args.plan is None or args.graph is None:
        ap.error("--onnx, --plan and --graph are required unless --check")
    try:
        cfg, changes = fit_to_gpu(_load_config(args.config))
        if changes:
            print(f"profile maxima lowered to fit a 24 GB GPU: {', '.join(changes)}")
        build_engine(
            args.onnx,
            args.plan,
            cfg,
            args.graph,
            args.precision,
            args.timing_cache,
            args.workspace_gib,
            progress=print,
        )
    except (TensorRTUnavailable, EngineBuildError, ConfigError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
