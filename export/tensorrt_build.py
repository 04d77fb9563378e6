"""ONNX graph -> TensorRT engine (``model.plan`` + ``model.plan.json``) through Polygraphy.

Polygraphy (``polygraphy.backend.trt``, maintained with TensorRT and tested by NVIDIA against
every release) parses the ONNX file into a strongly typed network, creates the builder config with
our optimization profile and timing cache, builds and serializes the engine. What stays ours is
what only this project knows: the profile from the tensor declarations
(``export/tensorrt_profiles.py``), the GPU memory budget behind its maxima
(``export/tensorrt_budget.py``), the precision the ONNX graph was converted to
(``export/precision.py``) and the metadata that ties a plan to its container
(``export/tensorrt_metadata.py``, ``export/tensorrt_versions.py``).

:func:`engine_recipe` assembles Polygraphy's loaders without running them: they import TensorRT
lazily, so the recipe is built and unit-tested on machines without TensorRT.
:func:`build_engine` runs it where TensorRT and a GPU are present and raises
:class:`TensorRTUnavailable` (one sentence, what to install) elsewhere.

TensorRT 11 migration (https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html,
"Removed Python APIs and Replacements": .../tensorrt-10x-to-11x-python-api-reference.html), each
point handled here for every supported version (``>= 10.12, < 12``):

* weak typing is removed ("Strongly Typed Networks Are Now Required"): every network is created
  strongly typed (``NetworkFromOnnxPath(strongly_typed=True)``: required on 10.12+, accepted and
  ignored on 11, where every network is strongly typed);
* the precision-enabling builder flags are gone (``BuilderFlag.FP16/BF16/INT8/FP8/INT4/FP4``,
  ``OBEY/PREFER_PRECISION_CONSTRAINTS``): ``CreateConfig``'s ``fp16/bf16/int8/fp8`` and
  ``precision_constraints`` stay unset; an fp16/bf16 engine is built from the mixed-precision
  ONNX graph of ``export/precision.py`` (the migration guide's "precision in the graph" path,
  fp32 islands set in the graph), and a graph whose recorded precision differs is refused;
* ``Builder.platform_has_fast_fp16`` is removed: the bf16 gate reads the GPU's compute capability
  (PyTorch or ``nvidia-smi``), not TensorRT;
* ``IBuilderConfig.int8_calibrator`` and the quantization flags are removed: no calibrator;
* ``IAlgorithmSelector`` is removed: none is set (``CreateConfig(algorithm_selector=None)``);
* ``BuilderFlag.DIRECT_IO`` is removed and ``EXPLICIT_BATCH`` ignored since 10.0: neither is set
  (Polygraphy sets them only on versions before 11 and 10 respectively);
* ``ICudaEngine.device_memory_size`` is removed: the memory budget is our own arithmetic
  (``export/tensorrt_budget.py``), never read back from an engine.

``BuilderFlag.TF32`` exists in both and is on by default in TensorRT; it rounds fp32 matmul inputs
to 10-bit mantissas, so the recipe clears it (``CreateConfig(tf32=False)``, Polygraphy's default
too): fp32 engines hold fp32 parity at 1e-4.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from contract.config import AstroConfig
from contract.program import program_name
from contract.tensors import GRAPHS, USER_KEYS
from export.tensorrt_budget import DEFAULT_WORKSPACE_GIB, GiB, memory_estimate
from export.tensorrt_metadata import EngineMetadata, sha256_file
from export.tensorrt_profiles import CACHE_DTYPE_NAMES, polygraphy_profile, profile_shapes
from export.tensorrt_versions import SUPPORTED, TensorRTVersionError, require_supported

log = logging.getLogger(__name__)

INSTALL_HINT = (
    f"on a GPU host `pip install '.[gpu]'` (TensorRT {SUPPORTED}) or run inside "
    "nvcr.io/nvidia/tritonserver:<yy.mm>-py3; elsewhere use --target onnxruntime or python"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU for it) is missing on this machine; the message says what to install."""


class EngineBuildError(RuntimeError):
    """TensorRT is present but the engine could not be built; the message names the cause."""


class Precision(str, Enum):
    """The precision an engine computes in: the ONNX graph's, since networks are strongly typed."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value


def min_compute_capability(precision: Precision | str) -> tuple[int, int]:
    """Oldest GPU that runs the precision's kernels: bf16 needs Ampere (8.0); TensorRT 10 needs 7.5+."""
    return (8, 0) if Precision(precision) is Precision.BF16 else (7, 5)


# ---------------------------------------------------------------------------------------
# The recipe: Polygraphy loaders, assembled without TensorRT
# ---------------------------------------------------------------------------------------
class EngineRecipe(NamedTuple):
    """Polygraphy's lazy loaders for one engine; calling ``engine()`` parses and builds."""

    network: Any  # polygraphy.backend.trt.NetworkFromOnnxPath
    config: Any  # polygraphy.backend.trt.CreateConfig
    engine: Any  # polygraphy.backend.trt.EngineFromNetwork


def engine_recipe(
    onnx_path: Path,
    cfg: AstroConfig,
    graph: str,
    timing_cache: Path | None = None,
    memory_pool_limits: Mapping[Any, int] | None = None,
) -> EngineRecipe:
    """The loaders that build ``graph`` from ``onnx_path``: strongly typed, one optimization profile
    from the declarations, no precision flag and TF32 off (see the module docstring), the timing cache
    loaded from and saved back to ``timing_cache`` (Polygraphy merges it under a file lock), and
    ``memory_pool_limits`` (``{tensorrt.MemoryPoolType.WORKSPACE: bytes}``, built by the caller that
    has TensorRT). Pass a config already bounded by ``export.tensorrt_budget.fit_to_gpu``."""
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath

    cache = str(timing_cache) if timing_cache is not None else None
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)  # external weights beside it resolve
    config = CreateConfig(
        profiles=[polygraphy_profile(cfg, graph)],
        tf32=False,
        load_timing_cache=cache,
        memory_pool_limits=dict(memory_pool_limits) if memory_pool_limits is not None else None,
    )
    return EngineRecipe(network, config, EngineFromNetwork(network, config, save_timing_cache=cache))


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
    if not hasattr(tensorrt, "Builder"):  # a bare `tensorrt/` folder (type stubs) imports as an empty package
        raise TensorRTUnavailable(f"`import tensorrt` found a package without TensorRT in it; {INSTALL_HINT}")
    version = str(tensorrt.__version__)
    try:
        require_supported(version)
    except TensorRTVersionError as e:
        raise TensorRTUnavailable(str(e)) from None
    return version


def _gpu_identity() -> tuple[str, str] | None:
    """(name, compute capability "M.m") of CUDA device 0, or None when no GPU is visible.

    Asks PyTorch first (the [model] extra), then ``nvidia-smi``; TensorRT 11 has no device query.
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
    for fields in ("name,compute_cap", "name"):  # compute_cap needs a driver >= 510
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


def parse_compute_capability(cc: str) -> tuple[int, int] | None:
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
    graph: str,
    precision: Precision | str = Precision.FP32,
    timing_cache: Path | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    progress: Callable[[str], None] = log.info,
) -> EngineMetadata:
    """Build ``onnx_path`` into a serialized engine at ``plan_path`` (+ ``<plan>.json`` metadata).

    The engine computes in the types the ONNX graph holds, so an fp16/bf16 engine needs the graph
    ``export/precision.py`` converted to that precision (a mismatch is an :class:`EngineBuildError`).
    ``timing_cache``, when given, is loaded if it exists and saved back, so rebuilding on the same GPU
    skips most kernel timing; ``workspace_gib`` caps the scratch memory a layer's kernels may use.
    Raises :class:`TensorRTUnavailable` without a supported TensorRT or a GPU, :class:`EngineBuildError`
    when the graph's precision, Polygraphy's parse (input names against the profile included) or the
    build fails.
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
    if (have := parse_compute_capability(cc)) is not None and have < need:
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
    from polygraphy import __version__ as polygraphy_version
    from polygraphy.backend.trt import bytes_from_engine
    from polygraphy.exception import PolygraphyException

    recipe = engine_recipe(
        onnx_path, cfg, graph, timing_cache, {trt.MemoryPoolType.WORKSPACE: int(workspace_gib * GiB)}
    )
    progress(memory_estimate(cfg, graph, cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates).describe())
    progress(f"building {graph} ({p}) from {onnx_path} for {gpu_name} with TensorRT {version} through Polygraphy")
    t0 = time.monotonic()
    try:
        engine = recipe.engine()
    except PolygraphyException as e:  # Polygraphy logged TensorRT's own errors above it
        raise EngineBuildError(f"TensorRT could not build {graph} from {onnx_path}: {e}") from e
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io_dtypes = {n: str(engine.get_tensor_dtype(n).name) for n in names}
    cache_dtype = CACHE_DTYPE_NAMES.get(io_dtypes.get(USER_KEYS, ""), "")
    if not cache_dtype:
        raise EngineBuildError(
            f"{graph} from {onnx_path}: {USER_KEYS} is {io_dtypes.get(USER_KEYS, 'absent')}, "
            f"expected one of {sorted(CACHE_DTYPE_NAMES)}"
        )
    tmp = plan_path.with_name(f".{plan_path.name}.tmp{os.getpid()}")  # a crash never leaves a truncated plan
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(bytes_from_engine(engine))
    os.replace(tmp, plan_path)

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
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - t0, 3),
        workspace_gib=workspace_gib,
        profiles=profile_shapes(cfg, graph),
        io_dtypes=io_dtypes,
        fp32_nodes=fp32_nodes,
        builder=f"polygraphy {polygraphy_version}",
    )
    meta.write(plan_path)
    progress(f"wrote {plan_path} ({plan_path.stat().st_size / 2**20:.1f} MiB) in {meta.build_seconds:.1f} s")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """Whether TensorRT engines can be built here (exit 0) or not (exit 1), with the reason."""
    ap = argparse.ArgumentParser(
        prog=program_name("export.tensorrt_build"),
        description="Say whether this host can build TensorRT engines (TensorRT in range and a CUDA GPU); "
        "`python -m export --target tensorrt` builds them.",
    )
    ap.parse_args(argv)
    ok, reason = tensorrt_available()
    print(reason)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
