"""TensorRT engines built from the exported ONNX graphs, held to ONNX Runtime on the same graphs.

Needs TensorRT and an NVIDIA GPU. Elsewhere every test here is skipped with
``tensorrt_available()``'s reason, decided in a fixture when the first test runs: nothing probes
CUDA or imports TensorRT at import time.

What runs where it can: the tiny model's two graphs are exported (fp32 and fp16 cache); the
fp16-cache export is converted to an fp16-compute graph (export/precision.py, fp32 islands set in
the graph); both are built as strongly typed engines (fp32 and fp16) through Polygraphy with one
shared timing cache, and run by Polygraphy's ``TrtRunner`` on random requests over several
shapes, including profile min, opt and max and users with no history. Checked in order: tensor
names, dtypes, profile shapes and metadata; then values against ONNX Runtime (Polygraphy's
``OnnxrtRunner``, CPU) on the very graphs the engines were built from, through Polygraphy's
``Comparator`` with the per-output tolerances of ``export/tensorrt_parity.py``; then top-k ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from contract.config import AstroConfig
from contract.tensors import GRAPHS, USER_KEYS, USER_VALUES
from export.tensorrt_build import build_engine, tensorrt_available
from export.tensorrt_metadata import EngineMetadata, sha256_file
from export.tensorrt_parity import TOLERANCES, Chain, compare_chains
from export.tensorrt_profiles import expected_dtypes, output_shapes, profile_shapes
from model.random_inputs import random_request

if TYPE_CHECKING:
    from contract.tensors import CacheDType
    from export.onnx_graphs import GraphPaths

pytestmark = pytest.mark.tensorrt

CFG = AstroConfig.from_name("tiny")
PRECISIONS = ("fp32", "fp16")
# engine precision -> cache dtype of the ONNX it is built from
CACHE_DTYPE_FOR: dict[str, CacheDType] = {"fp32": "fp32", "fp16": "fp16"}

# (batch, block_len, n_candidates, users with no history)
SHAPES = [
    pytest.param(1, 1, 1, 0, id="profile-min"),
    pytest.param(1, CFG.max_block_len, 7, 1, id="new-user"),
    pytest.param(3, 5, 64, 1, id="ragged"),
    pytest.param(
        math.ceil(CFG.max_batch_size / 2), CFG.max_block_len, math.ceil(CFG.max_candidates / 2), 0, id="profile-opt"
    ),
    pytest.param(CFG.max_batch_size, CFG.max_block_len, CFG.max_candidates, 2, id="profile-max"),
]


# ---- fixtures: skip decided here, at run time, never at import ------------------------------
@pytest.fixture(scope="module")
def gpu() -> str:
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(reason)
    return reason


@pytest.fixture(scope="module")
def graphs(gpu: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GraphPaths]:
    """engine precision -> the tiny model's two ONNX graphs that engine is built from."""
    import torch

    from export.onnx_graphs import GraphPaths, export_graphs
    from export.precision import convert_file
    from model.astro import AstroModel

    torch.manual_seed(0)
    model = AstroModel(CFG).eval()
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for precision in PRECISIONS:
        paths = export_graphs(model, root / precision, cache_dtype=CACHE_DTYPE_FOR[precision])
        if precision != "fp32":  # strongly typed: the precision is set in the graph
            low = GraphPaths(*(root / precision / f"{g}.{precision}.onnx" for g in GRAPHS))
            for g in GRAPHS:
                convert_file(getattr(paths, g), getattr(low, g), "fp16")
            paths = low
        out[precision] = paths
    return out


@dataclass(frozen=True)
class Built:
    plans: dict[str, Path]  # graph -> model.plan
    meta: dict[str, EngineMetadata]
    onnx: dict[str, Path]
    progress: list[str]
    timing_cache: Path


@pytest.fixture(scope="module")
def engines(graphs: dict[str, GraphPaths], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """precision -> both engines, built with one shared timing cache."""
    root = tmp_path_factory.mktemp("engines")
    cache = root / "timing.cache"
    built = {}
    for precision in PRECISIONS:
        paths = graphs[precision]
        onnx = {"user_encoder": paths.user_encoder, "item_scorer": paths.item_scorer}
        lines: list[str] = []
        plans: dict[str, Path] = {}
        metas: dict[str, EngineMetadata] = {}
        for graph in GRAPHS:
            plans[graph] = root / precision / graph / "1" / "model.plan"
            metas[graph] = build_engine(
                onnx[graph], plans[graph], CFG, graph, precision, cache, workspace_gib=2.0, progress=lines.append
            )
        built[precision] = Built(plans, metas, onnx, lines, cache)
    return built


def _engine(plan: Path) -> Any:
    """The deserialized engine (``tensorrt.ICudaEngine``) of a plan, through Polygraphy."""
    from polygraphy.backend.trt import engine_from_bytes

    return engine_from_bytes(plan.read_bytes())


@pytest.fixture(scope="module")
def trt_chains(engines: dict[str, Built]) -> dict[str, Chain]:
    """precision -> the two engines as Polygraphy ``TrtRunner``s."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    def runner(plan: Path) -> Any:
        return TrtRunner(EngineFromBytes(plan.read_bytes()))

    return {p: Chain(runner(b.plans["user_encoder"]), runner(b.plans["item_scorer"])) for p, b in engines.items()}


@pytest.fixture(scope="module")
def ort_chains(graphs: dict[str, GraphPaths]) -> dict[str, Chain]:
    """precision -> the very graphs the engines were built from, as Polygraphy ``OnnxrtRunner``s (CPU)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    def runner(path: Path) -> Any:
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]))

    return {p: Chain(runner(paths.user_encoder), runner(paths.item_scorer)) for p, paths in graphs.items()}


# ---- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_engine_io_profiles_and_metadata(precision: str, engines: dict[str, Built]) -> None:
    import tensorrt as trt

    built, cache_dtype = engines[precision], CACHE_DTYPE_FOR[precision]
    problems: list[str] = []
    for graph in GRAPHS:
        engine, prof, outs = _engine(built.plans[graph]), profile_shapes(CFG, graph), output_shapes(CFG, graph)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        # names
        if set(inputs) != set(prof) or set(outputs) != set(outs):
            problems.append(f"{graph}: engine I/O {inputs} -> {outputs}, expected {list(prof)} -> {list(outs)}")
            continue
        # dtypes: ids INT64 and mask BOOL as they are (native since TensorRT 10), cache as exported
        allowed = expected_dtypes(graph)
        cache_name = {"fp32": "FLOAT", "fp16": "HALF"}[cache_dtype]
        dtypes = {n: engine.get_tensor_dtype(n).name for n in names}
        for name, dtype in dtypes.items():
            want = {cache_name} if name in (USER_KEYS, USER_VALUES) else allowed[name]
            if dtype not in want:
                problems.append(f"{graph}.{name}: engine dtype {dtype}, expected {sorted(want)}")
        # the one optimization profile is exactly profile_shapes()
        for name, rng in prof.items():
            got = tuple(tuple(d) for d in engine.get_tensor_profile_shape(name, 0))
            if got != (rng.min, rng.opt, rng.max):
                problems.append(f"{graph}.{name}: engine profile {got}, expected {tuple(rng)}")
        # metadata beside the plan
        meta = built.meta[graph]
        if EngineMetadata.read(built.plans[graph]) != meta:
            problems.append(f"{graph}: {built.plans[graph]}.json differs from what build_engine returned")
        expect = {
            "precision": precision,
            "cache_dtype": cache_dtype,
            "graph": graph,
            "config_name": CFG.name,
            "onnx_sha256": sha256_file(built.onnx[graph]),
            "profiles": prof,
            "io_dtypes": dtypes,
        }
        for key, want_value in expect.items():
            if getattr(meta, key) != want_value:
                problems.append(f"{graph} metadata {key}={getattr(meta, key)!r}, expected {want_value!r}")
        if (precision == "fp32") != (not meta.fp32_nodes):
            problems.append(f"{graph}: {len(meta.fp32_nodes)} fp32 islands recorded for a {precision} engine")
        if not meta.builder.startswith("polygraphy "):
            problems.append(f"{graph}: metadata builder {meta.builder!r}")
    assert built.progress, "build_engine reported no progress"
    assert built.timing_cache.is_file() and built.timing_cache.stat().st_size > 0, "timing cache not saved"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("batch", "block_len", "n_cand", "empty_users"), SHAPES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_engines_match_onnxruntime(
    precision: str,
    batch: int,
    block_len: int,
    n_cand: int,
    empty_users: int,
    trt_chains: dict[str, Chain],
    ort_chains: dict[str, Chain],
) -> None:
    """ONNX Runtime on the very graphs the engines were built from is the reference: encoder outputs, the
    scorer on the reference cache, the engines chained encoder -> scorer, then the top-k ranking."""
    tol = TOLERANCES[precision]
    rng = np.random.default_rng([batch, block_len, n_cand, empty_users])
    req = random_request(CFG, rng, batch, block_len, n_cand, empty_users=empty_users)
    problems = compare_chains(ort_chains[precision], trt_chains[precision], [req], tol, CFG.tasks)
    assert not problems, f"{precision} engines vs ONNX Runtime ({tol.reason}):\n" + "\n".join(problems)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shapes_beyond_the_config_are_refused(precision: str, trt_chains: dict[str, Chain]) -> None:
    """The profile max is the config's limit: one user more than max_batch_size is rejected, not run."""
    from polygraphy.exception import PolygraphyException

    rng = np.random.default_rng(0)
    req = random_request(CFG, rng, CFG.max_batch_size + 1, CFG.max_block_len, 1)
    with trt_chains[precision].encoder as encoder, pytest.raises(PolygraphyException):
        encoder.infer(req.graph_inputs("user_encoder"))
