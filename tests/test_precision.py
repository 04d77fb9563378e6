"""The mixed-precision ONNX graphs a strongly typed TensorRT build reads (export/precision.py).

Runs everywhere, on CPU: the precision plan of the exported graphs (which nodes stay fp32, which
integer arithmetic is untouched, graph I/O as declared), then a real parity check: the fp16 graphs
in ONNX Runtime against the fp32 graphs, values within the named fp16 tolerance and top-k agreement,
on the trained `small` checkpoint and seeded random requests over several shapes (seed printed).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from contract.config import AstroConfig
from contract.tensors import DTYPES, GRAPHS, ITEM_SCORER, USER_ENCODER, CacheDType, graph_io
from export.onnx_graphs import GraphPaths, export_graphs
from export.parity import OrtPipeline
from export.precision import (
    FP32_OPS,
    LOW_PRECISIONS,
    LOW_TYPES,
    PRECISION_KEY,
    TOLERANCES,
    PrecisionError,
    compare_pipelines,
    convert,
    convert_file,
    graph_precision,
    plan_precision,
)
from model.astro import AstroModel
from model.random_inputs import random_request

ONNX_TYPE = {
    "int64": TensorProto.INT64,
    "bool": TensorProto.BOOL,
    "fp32": TensorProto.FLOAT,
    "fp16": TensorProto.FLOAT16,
}
SEED = int(os.environ.get("ASTRO_TEST_SEED", "20261124"))
# (batch, block length, candidates, users with no history): corners, typical and the profile maxima
SHAPES = [(1, 1, 1, 0), (2, 48, 64, 1), (16, 48, 100, 2), (4, 17, 1024, 0), (3, 5, 11, 3)]


@pytest.fixture(scope="module")
def small_graphs(small_model: AstroModel, tmp_path_factory: pytest.TempPathFactory) -> GraphPaths:
    """The trained small checkpoint's graphs (fp32 cache), exported once."""
    return export_graphs(small_model, tmp_path_factory.mktemp("small-fp32"), "fp32", progress=lambda _: None)


@pytest.fixture(scope="module")
def low_graphs(
    small_graphs: GraphPaths, tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str, str], tuple[Path, Path]]:
    """(source, precision, graph) -> (fp32 source graph, converted graph), source "small-fp32" / "tiny-fp16"."""
    out: dict[tuple[str, str, str], tuple[Path, Path]] = {}
    root = tmp_path_factory.mktemp("low")
    for source, paths in (("small-fp32", small_graphs), ("tiny-fp16", tiny_graphs("fp16"))):
        for precision in LOW_PRECISIONS:
            for graph in GRAPHS:
                src = getattr(paths, graph)
                dst = root / source / f"{graph}.{precision}.onnx"
                convert_file(src, dst, precision)
                out[source, precision, graph] = (src, dst)
    return out


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True).graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


CASES = [(s, p, g) for s in ("small-fp32", "tiny-fp16") for p in ("fp16", "bf16") for g in GRAPHS]


# ---- the precision plan ------------------------------------------------------------------------
@pytest.mark.parametrize(("source", "precision", "graph"), CASES)
def test_fp32_islands_and_untouched_integers(
    source: str, precision: str, graph: str, low_graphs: dict[tuple[str, str, str], tuple[Path, Path]]
) -> None:
    src_path, dst_path = low_graphs[source, precision, graph]
    src, dst = onnx.load(str(src_path)), onnx.load(str(dst_path))
    plan = plan_precision(src, precision)  # type: ignore[arg-type]
    src_types, dst_types = _types(src), _types(dst)
    nodes = {n.name: n for n in dst.graph.node}
    src_nodes = {n.name: n for n in src.graph.node}
    low = LOW_TYPES[precision]
    problems = []
    for name, kind in plan.kinds.items():
        node, before = nodes[name], src_nodes[name]
        float_in = [node.input[i] for i, t in enumerate(before.input) if src_types.get(t) == TensorProto.FLOAT]
        float_out = [t for t in node.output if src_types.get(t) == TensorProto.FLOAT]
        if node.op_type in FP32_OPS and kind != "untouched" and kind != "fp32":
            problems.append(f"{name} ({node.op_type}) is {kind}, not an fp32 island")
        if kind == "fp32" and any(dst_types[t] != TensorProto.FLOAT for t in (*float_in, *float_out)):
            problems.append(f"{name} ({node.op_type}) is an fp32 island but reads or writes another type")
        # low-precision compute: every input that was fp32 in the source is now the low type
        wrong = [t for t in float_in if dst_types[t] != low]
        if kind == "low" and node.op_type not in ("Cast", "Shape", "Size") and wrong:
            problems.append(f"{name} ({node.op_type}) is low precision but reads {wrong} in another type")
        if kind == "untouched" and any(dst_types.get(t) != src_types.get(t) for t in node.output):
            problems.append(f"{name} ({node.op_type}) is untouched but its outputs changed type")
    # integer/bool tensors (ids, hashing, position/time buckets, masks) keep their types exactly
    for name, t in src_types.items():
        if t in (TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL) and dst_types.get(name, t) != t:
            problems.append(f"integer tensor {name} changed type {t} -> {dst_types[name]}")
    # every normalisation, softmax and float reduction of the source is an fp32 island
    for must in ("LayerNormalization", "Softmax", "Softplus"):
        count = sum(1 for n in src.graph.node if n.op_type == must)
        assert plan.op_counts("fp32").get(must, 0) == count, f"{must}: {plan.summary()}"
    assert plan.nodes("low"), f"nothing runs in {precision}: {plan.summary()}"
    assert graph_precision(dst) == precision and graph_precision(src) == "fp32"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("source", "precision", "graph"), CASES)
def test_graph_io_stays_as_declared(
    source: str, precision: str, graph: str, low_graphs: dict[tuple[str, str, str], tuple[Path, Path]]
) -> None:
    _, dst_path = low_graphs[source, precision, graph]
    dst = onnx.load(str(dst_path))
    cfg = AstroConfig.from_name(source.split("-")[0])
    cache: CacheDType = "fp16" if source.endswith("fp16") else "fp32"
    inputs, outputs = graph_io(cfg, graph, cache)
    got = {v.name: v.type.tensor_type.elem_type for v in (*dst.graph.input, *dst.graph.output)}
    want = {t.name: ONNX_TYPE[t.dtype.name] for t in (*inputs, *outputs)}
    assert got == want
    assert [i.name for i in dst.graph.input] == [t.name for t in inputs]
    assert set(DTYPES) >= {t.dtype.name for t in (*inputs, *outputs)}


def test_weights_read_only_in_low_precision_are_stored_low(
    low_graphs: dict[tuple[str, str, str], tuple[Path, Path]],
) -> None:
    src_path, dst_path = low_graphs["small-fp32", "fp16", ITEM_SCORER]
    src, dst = onnx.load(str(src_path)), onnx.load(str(dst_path))

    def nbytes(m: onnx.ModelProto) -> dict[int, int]:
        sizes: dict[int, int] = collections.Counter()
        for t in m.graph.initializer:
            sizes[t.data_type] += onnx.numpy_helper.to_array(t).nbytes
        return sizes

    before, after = nbytes(src), nbytes(dst)
    assert after[TensorProto.FLOAT16] > 0.9 * before[TensorProto.FLOAT] / 2, (before, after)
    # the weights left in fp32 feed only fp32 islands (LayerNorm scale/bias): small
    assert after[TensorProto.FLOAT] < 0.05 * before[TensorProto.FLOAT], (before, after)


def test_bf16_keeps_einsum_fp32_because_onnx_admits_no_bf16_einsum() -> None:
    """The exported graphs have no Einsum (their projections are MatMul); a graph that has one, planned
    for bf16, keeps it fp32 (ONNX's Einsum schema admits no bfloat16) while fp16 lowers it."""
    x = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    w = onnx.numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    node = onnx.helper.make_node("Einsum", ["x", "w"], ["y"], equation="ij,jk->ik", name="proj")
    graph = onnx.helper.make_graph([node], "einsum", [x], [y], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert plan_precision(model, "bf16").op_counts("fp32") == {"Einsum": 1}
    assert plan_precision(model, "fp16").op_counts("low") == {"Einsum": 1}


def test_refuses_double_conversion_and_unknown_precision(
    low_graphs: dict[tuple[str, str, str], tuple[Path, Path]],
) -> None:
    src_path, dst_path = low_graphs["small-fp32", "fp16", USER_ENCODER]
    with pytest.raises(PrecisionError, match="already fp16"):
        convert(onnx.load(str(dst_path)), "fp16")
    with pytest.raises(PrecisionError, match="unknown low precision"):
        plan_precision(onnx.load(str(src_path)), "int8")  # type: ignore[arg-type]
    assert onnx.load(str(dst_path)).metadata_props[-1].key == PRECISION_KEY


# ---- parity: the fp16 graphs in ONNX Runtime against the fp32 graphs ------------------------------
@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16"])
def test_fp16_graphs_agree_with_fp32_graphs_on_the_trained_model(
    cache_dtype: CacheDType,
    small_model: AstroModel,
    small_graphs: GraphPaths,
    low_graphs: dict[tuple[str, str, str], tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    tol = TOLERANCES["fp16"]
    if cache_dtype == "fp32":
        ref_paths = small_graphs
        low = [low_graphs["small-fp32", "fp16", g][1] for g in (USER_ENCODER, ITEM_SCORER)]
    else:  # the fp16-cache export, converted: cache I/O fp16, compute fp16
        ref_paths = export_graphs(small_model, tmp_path / "ref", "fp16", progress=lambda _: None)
        low = [tmp_path / f"{g}.fp16.onnx" for g in (USER_ENCODER, ITEM_SCORER)]
        for g, dst in zip((USER_ENCODER, ITEM_SCORER), low, strict=True):
            convert_file(getattr(ref_paths, g), dst, "fp16")
    reference, candidate = OrtPipeline(ref_paths, threads=1), OrtPipeline(GraphPaths(*low), threads=1)
    rng = np.random.default_rng(SEED)
    cfg = small_model.cfg
    requests = [random_request(cfg, rng, b, tb, n, e) for b, tb, n, e in SHAPES]
    report = compare_pipelines(reference, candidate, requests, "fp16", SEED, progress=lambda _: None)
    print(report.summary())  # the measured figures, with their tolerances and the seed
    assert report.shapes == len(SHAPES)
    assert not report.problems, f"seed {SEED} ({tol.reason}):\n" + "\n".join(report.problems)
    assert report.max_abs["scores"] > 0, "the fp16 graph computed exactly the fp32 values: nothing ran in fp16"
