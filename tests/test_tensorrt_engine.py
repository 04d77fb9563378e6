"""TensorRT engines built from the exported ONNX graphs, held to ONNX Runtime on the same graphs.

Needs TensorRT, an NVIDIA GPU and PyTorch with CUDA (its tensors are the engine buffers).
Elsewhere every test here is skipped with ``tensorrt_available()``'s reason, decided in a
fixture when the first test runs: nothing probes CUDA or imports TensorRT at import time.

What runs where it can: the tiny model's two graphs are exported (fp32 and fp16 cache); the
fp16-cache export is converted to an fp16-compute graph (export/precision.py, fp32 islands set in
the graph); both are built as strongly typed engines (fp32 and fp16) with one shared timing
cache, and run on random requests over several shapes, including profile min, opt and max and
users with no history. Checked in order: tensor names, dtypes, profile shapes and metadata; then
values against ONNX Runtime (CPU) on the very graphs the engines were built from, with
tolerances named per precision below; then top-k ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest

from contract.config import AstroConfig
from contract.tensors import CACHE_TENSORS, SCORES_OUTPUT, USER_KEYS, USER_MASK, USER_VALUES
from export.ranking import TOP_K, topk_intruders
from export.tensorrt_engine import (
    GRAPHS,
    EngineMetadata,
    build_engine,
    expected_dtypes,
    output_shapes,
    profile_shapes,
    sha256_file,
    tensorrt_available,
)
from model.random_inputs import random_request

if TYPE_CHECKING:
    import onnxruntime
    import tensorrt as trt
    import torch

    from contract.tensors import CacheDType
    from export.onnx_graphs import GraphPaths

pytestmark = pytest.mark.tensorrt

CFG = AstroConfig.from_name("tiny")
PRECISIONS = ("fp32", "fp16")
# engine precision -> cache dtype of the ONNX it is built from
CACHE_DTYPE_FOR: dict[str, CacheDType] = {"fp32": "fp32", "fp16": "fp16"}
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Tolerance:
    scores_atol: float  # on probabilities in (0, 1)
    cache_atol: float  # keys/values; keys carry 1/tau (up to 1/tau_min = 10x)
    cache_rtol: float
    rank_tie: float  # top-k sets may differ only among candidates whose reference scores are this close
    reason: str


TOLERANCES = {
    "fp32": Tolerance(
        scores_atol=1e-4,
        cache_atol=1e-4,
        cache_rtol=1e-4,
        rank_tie=2e-4,
        reason="the same fp32 maths with TF32 off: only kernel choice and summation order differ "
        "(~1e-6 on these sizes); 1e-4 leaves two orders of headroom without hiding a wrong op",
    ),
    "fp16": Tolerance(
        scores_atol=1e-2,
        cache_atol=2e-2,
        cache_rtol=1e-2,
        rank_tie=5e-3,
        reason="both sides run the same fp16 graph (fp32 islands for softmax, LayerNorm, reductions and "
        "the output sigmoid set in it by export/precision.py); fp16 keeps 11 significant bits (~5e-4 "
        "relative per rounding) and the two runtimes pick different kernels and summation orders, "
        "compounded over the matmuls of L layers. Ranking is held tighter than the value tolerance "
        "allows: swaps only between candidates within 5e-3 of the k-th best score",
    ),
}

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
    import torch

    if not torch.cuda.is_available():
        pytest.skip(
            f"{reason}, but PyTorch {torch.__version__} has no CUDA; these tests use its CUDA tensors as buffers"
        )
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


def _shape(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))  # Dims: len() and indexing


class TrtRunner:
    """One engine + execution context; torch CUDA tensors as I/O buffers, run on the current stream."""

    def __init__(self, plan: Path) -> None:
        import tensorrt as trt
        import torch

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # must outlive the engine
        self.engine: trt.ICudaEngine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        assert self.engine is not None, f"{plan} does not deserialize"
        self.context: trt.IExecutionContext = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inputs = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]
        to_torch = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT64: torch.int64,
            trt.DataType.INT32: torch.int32,
            trt.DataType.BOOL: torch.bool,  # TensorRT BOOL is one byte, like torch.bool
        }
        self.dtype_name = {n: self.engine.get_tensor_dtype(n).name for n in names}
        self.torch_dtype = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        return tuple(_shape(d) for d in self.engine.get_tensor_profile_shape(name, 0))

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        import torch

        if set(feeds) != set(self.inputs):
            raise KeyError(f"feeds {sorted(feeds)} but the engine takes {sorted(self.inputs)}")
        keep = {}
        for name in self.inputs:
            t = feeds[name]
            t = torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t
            if t.dtype != self.torch_dtype[name]:
                raise TypeError(f"{name}: got {t.dtype}, the engine takes {self.dtype_name[name]}")
            t = t.to("cuda").contiguous()
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"{name}: shape {tuple(t.shape)} is outside the profile {self.profile(name)}")
            self.context.set_tensor_address(name, t.data_ptr())
            keep[name] = t  # alive until the stream is synchronised
        outs = {}
        for name in self.outputs:
            shape = _shape(self.context.get_tensor_shape(name))
            assert all(d >= 0 for d in shape), f"{name}: unresolved output shape {shape}"
            outs[name] = torch.empty(shape, dtype=self.torch_dtype[name], device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()  # the copies above were queued on it too
        assert self.context.execute_async_v3(stream.cuda_stream), "execute_async_v3 failed"
        stream.synchronize()
        return outs


@pytest.fixture(scope="module")
def runners(engines: dict[str, Built]) -> dict[tuple[str, str], TrtRunner]:
    return {(p, g): TrtRunner(b.plans[g]) for p, b in engines.items() for g in GRAPHS}


@pytest.fixture(scope="module")
def sessions(graphs: dict[str, GraphPaths]) -> dict[tuple[str, str], onnxruntime.InferenceSession]:
    import onnxruntime as ort

    def session(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    return {(p, g): session(getattr(paths, g)) for p, paths in graphs.items() for g in GRAPHS}


# ---- comparisons: collect every mismatch, name the tensor -------------------------------------
def _np(x: Any) -> npt.NDArray[Any]:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def value_mismatches(name: str, ref: Any, got: Any, atol: float, rtol: float = 0.0) -> list[str]:
    r, g = _np(ref), _np(got)
    if r.shape != g.shape:
        return [f"{name}: shape {g.shape}, reference {r.shape}"]
    if r.dtype != g.dtype:
        return [f"{name}: dtype {g.dtype}, reference {r.dtype}"]
    if r.dtype == np.bool_:
        bad = int((r != g).sum())
        return [f"{name}: {bad}/{r.size} mask entries differ"] if bad else []
    r64, g64 = r.astype(np.float64), g.astype(np.float64)
    if not np.isfinite(g64).all():
        return [f"{name}: {int((~np.isfinite(g64)).sum())}/{g.size} non-finite values"]
    excess = np.abs(g64 - r64) - (atol + rtol * np.abs(r64))
    if (excess <= 0).all():
        return []
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    return [
        f"{name}: {int((excess > 0).sum())}/{g.size} values outside atol={atol} rtol={rtol}; "
        f"worst at {tuple(int(i) for i in worst)}: got {g64[worst]:.6g}, reference {r64[worst]:.6g}"
    ]


# ---- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_engine_io_profiles_and_metadata(
    precision: str, engines: dict[str, Built], runners: dict[tuple[str, str], TrtRunner]
) -> None:
    built, cache_dtype = engines[precision], CACHE_DTYPE_FOR[precision]
    problems: list[str] = []
    for graph in GRAPHS:
        run, prof, outs = runners[precision, graph], profile_shapes(CFG, graph), output_shapes(CFG, graph)
        # names
        if set(run.inputs) != set(prof) or set(run.outputs) != set(outs):
            problems.append(f"{graph}: engine I/O {run.inputs} -> {run.outputs}, expected {list(prof)} -> {list(outs)}")
            continue
        # dtypes: ids INT64 and mask BOOL as they are (TensorRT 10 has both), cache as exported
        allowed = expected_dtypes(graph)
        cache_name = {"fp32": "FLOAT", "fp16": "HALF"}[cache_dtype]
        for name, dtype in run.dtype_name.items():
            want = {cache_name} if name in (USER_KEYS, USER_VALUES) else allowed[name]
            if dtype not in want:
                problems.append(f"{graph}.{name}: engine dtype {dtype}, expected {sorted(want)}")
        # the one optimization profile is exactly profile_shapes()
        for name, rng in prof.items():
            if run.profile(name) != (rng.min, rng.opt, rng.max):
                problems.append(f"{graph}.{name}: engine profile {run.profile(name)}, expected {tuple(rng)}")
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
            "io_dtypes": run.dtype_name,
        }
        for key, want_value in expect.items():
            if getattr(meta, key) != want_value:
                problems.append(f"{graph} metadata {key}={getattr(meta, key)!r}, expected {want_value!r}")
        if (precision == "fp32") != (not meta.fp32_nodes):
            problems.append(f"{graph}: {len(meta.fp32_nodes)} fp32 islands recorded for a {precision} engine")
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
    runners: dict[tuple[str, str], TrtRunner],
    sessions: dict[tuple[str, str], onnxruntime.InferenceSession],
) -> None:
    tol = TOLERANCES[precision]
    rng = np.random.default_rng([batch, block_len, n_cand, empty_users])
    req = random_request(CFG, rng, batch, block_len, n_cand, empty_users=empty_users)
    ort_enc, ort_scorer = sessions[precision, "user_encoder"], sessions[precision, "item_scorer"]
    trt_enc, trt_scorer = runners[precision, "user_encoder"], runners[precision, "item_scorer"]
    inputs = req.as_dict()
    user_feeds = {name: inputs[name] for name in trt_enc.inputs}  # history and scenario: no request time
    scorer_request = {name: inputs[name] for name in trt_scorer.inputs if name not in CACHE_TENSORS}

    # reference: ONNX Runtime on the very graphs the engines were built from
    ref_cache = dict(zip(CACHE_TENSORS, ort_enc.run(list(CACHE_TENSORS), user_feeds), strict=True))
    (ref_scores,) = ort_scorer.run([SCORES_OUTPUT], {**scorer_request, **ref_cache})

    got_cache = trt_enc(user_feeds)
    got_scores_own = trt_scorer({**scorer_request, **ref_cache})[SCORES_OUTPUT]  # the scorer alone
    got_scores_e2e = trt_scorer({**scorer_request, **got_cache})[SCORES_OUTPUT]  # encoder -> scorer on GPU

    problems = value_mismatches(USER_MASK, ref_cache[USER_MASK], got_cache[USER_MASK], 0.0)
    for name in (USER_KEYS, USER_VALUES):
        problems += value_mismatches(name, ref_cache[name], got_cache[name], tol.cache_atol, tol.cache_rtol)
    problems += value_mismatches("scores (scorer on ORT cache)", ref_scores, got_scores_own, tol.scores_atol)
    problems += value_mismatches("scores (encoder -> scorer)", ref_scores, got_scores_e2e, tol.scores_atol)
    intruders = topk_intruders(_np(ref_scores), _np(got_scores_e2e), tol.rank_tie)
    problems += [f"scores (encoder -> scorer), top-{TOP_K}: {i.describe(CFG.tasks)}" for i in intruders]
    assert not problems, f"{precision} engines vs ONNX Runtime ({tol.reason}):\n" + "\n".join(problems)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shapes_beyond_the_config_are_refused(precision: str, runners: dict[tuple[str, str], TrtRunner]) -> None:
    """The profile max is the config's limit: one user more than max_batch_size is rejected, not run."""
    rng = np.random.default_rng(0)
    req = random_request(CFG, rng, CFG.max_batch_size + 1, CFG.max_block_len, 1)
    encoder = runners[precision, "user_encoder"]
    with pytest.raises(ValueError, match="outside the profile"):
        encoder({name: req.as_dict()[name] for name in encoder.inputs})
