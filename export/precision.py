"""fp32 ONNX graph -> mixed-precision ONNX graph: the precision a strongly typed TensorRT engine runs in.

TensorRT >= 10.12 builds strongly typed networks: every tensor keeps the type the ONNX gives it,
and TensorRT 11 has no other mode (no ``BuilderFlag.FP16``, no per-layer precision pins). So an
fp16 or bf16 engine is built from a graph whose precision is set in the graph itself; this module
writes that graph from the fp32 export:

* **low precision** (fp16 or bf16) for the float compute: matmuls, einsums, embeddings, GELU,
  element-wise arithmetic, masking;
* **fp32 islands** (:data:`FP32_OPS`, each with its reason) for normalisation, softmax, reductions,
  the exp/log family and the output sigmoid; a Cast enters and leaves each island;
* **integer and bool arithmetic untouched**: item-id hashing, the integer log buckets of positions
  and timestamps (``model.astro.signed_log_bucket``), masks; the converter only ever changes tensors
  that are fp32 in the source graph;
* **graph I/O exactly as declared** in ``contract/tensors.py``: fp32 inputs are cast on entry,
  outputs are cast back to their declared type (``scores`` stays fp32, the key/value cache keeps
  the export's cache dtype);
* weights that feed only low-precision nodes are stored in low precision (half the bytes); a
  weight that also feeds an fp32 island stays fp32 and low-precision readers get a Cast.

The graph records its precision in ``metadata_props`` (:data:`PRECISION_KEY`), which the TensorRT
build reads to refuse an fp32 graph for an fp16 engine and vice versa.

Why not a library: onnxconverter-common 1.16 (``float16.convert_float_to_float16``), tried on these
graphs, changed the type of an output produced by a blocked op (``scores`` came out FLOAT16 despite
``keep_io_types=True``), left ``Cast(to=FLOAT)`` nodes inconsistent in the graph with an fp16 cache
input (the ONNX checker rejects it), rounds blocked ops' weights through fp16, and has no bf16.
NVIDIA's ModelOpt AutoCast (``nvidia-modelopt``) does this job for TensorRT but pulls in a GPU
toolchain that CPU CI cannot install. The rules here are short and tested on the exported graphs
(``tests/test_precision.py``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import ml_dtypes
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.ranking import TOP_K, compare_topk

if TYPE_CHECKING:  # torch-free at run time: export.tensorrt_build reads graph precision from here
    from contract.request_batch import RequestBatch
    from export.parity import OrtPipeline

LowPrecision = Literal["fp16", "bf16"]
LOW_PRECISIONS: tuple[LowPrecision, ...] = get_args(LowPrecision)
LOW_TYPES: dict[str, int] = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
PRECISION_KEY = "astro.precision"  # metadata_props: "fp32" (absent), "fp16" or "bf16"
FLOAT = TensorProto.FLOAT

# Ops that compute in fp32 whatever the precision of the graph, and why.
FP32_OPS: dict[str, str] = {
    "LayerNormalization": "mean and variance over d_model: squares overflow fp16 above ~256 and eps=1e-5 is "
    "below fp16's normal range",
    "Softmax": "exp of logits scaled by 1/(sqrt(dh)*tau), tau down to tau_min=0.1, summed over up to Nb*Tb+1 keys: "
    "overflow and lost small weights in fp16",
    "LogSoftmax": "as Softmax",
    "Softplus": "the dynamic temperature tau = tau_min + softplus(.): exp/log, and tau divides every logit",
    "Sigmoid": "the output probabilities and the BGF gates: saturate to exactly 0/1 early in fp16",
    "Exp": "overflows fp16 above ~11",
    "Log": "loses the relative precision of small arguments",
    "Pow": "squares overflow fp16 above ~256",
    "Sqrt": "part of a normalisation when an exporter decomposes one",
    "Reciprocal": "part of a normalisation when an exporter decomposes one",
    "CumSum": "a running sum accumulates rounding error",
    **{
        op: "a sum/mean over d_model, blocks or tokens accumulates rounding error and can overflow fp16"
        for op in (
            "ReduceSum",
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        )
    },
}
# Ops that read a float input for its shape (or convert any type): their inputs are never cast.
ANY_INPUT_OPS = frozenset({"Cast", "Shape", "Size"})
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
FLOAT_LIKE = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})

NodeKind = Literal["low", "fp32", "untouched"]


class PrecisionError(ValueError):
    """The graph cannot be converted (e.g. it holds subgraphs, or is not an fp32 graph)."""


@dataclass(frozen=True)
class PrecisionPlan:
    """Which node of a graph computes in which precision (node names as in the converted graph)."""

    precision: LowPrecision
    kinds: dict[str, NodeKind]  # node name -> kind
    ops: dict[str, str]  # node name -> op type

    def nodes(self, kind: NodeKind) -> list[str]:
        return [n for n, k in self.kinds.items() if k == kind]

    def op_counts(self, kind: NodeKind) -> dict[str, int]:
        return dict(sorted(collections.Counter(self.ops[n] for n in self.nodes(kind)).items()))

    def summary(self) -> str:
        fp32 = ", ".join(f"{op} x{c}" for op, c in self.op_counts("fp32").items()) or "none"
        return (
            f"{len(self.nodes('low'))} nodes in {self.precision}, {len(self.nodes('fp32'))} in fp32 ({fp32}), "
            f"{len(self.nodes('untouched'))} integer/bool nodes untouched"
        )


def graph_precision(model: onnx.ModelProto) -> str:
    """The precision this module recorded in ``model`` ("fp32" for a graph it did not convert)."""
    return next((p.value for p in model.metadata_props if p.key == PRECISION_KEY), "fp32")


def fp32_islands(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of a converted graph that compute in fp32 (empty for an fp32 graph)."""
    if graph_precision(model) == "fp32":
        return []
    types = _elem_types(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type != "Cast" and FLOAT in [types.get(t) for t in n.output] and n.name and "__" not in n.name
    ]


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node has a unique name (the plan is keyed by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}" if f"{node.op_type}_{i}" not in seen else f"{node.op_type}_{i}_n"
        seen.add(node.name)
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, from strict shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:  # Constant outputs are not always listed in value_info
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types.setdefault(node.output[0], a.t.data_type)
    return types


def admits(op_type: str, opset: int, precision: LowPrecision, domain: str = "") -> bool:
    """Whether ONNX's schema of ``op_type`` at ``opset`` lets its float tensors take the low type
    (Einsum, for one, admits no bfloat16 at any opset: such a node stays fp32)."""
    low = {"fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}[precision]
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return False
    return all(low in c.allowed_type_strs for c in schema.type_constraints if "tensor(float)" in c.allowed_type_strs)


def _kind(node: onnx.NodeProto, types: dict[str, int], opset: int, precision: LowPrecision) -> NodeKind:
    outs = [types.get(t) for t in node.output]
    ins = [types.get(t) for t in node.input if t]
    if FLOAT not in outs and (node.op_type in SHAPE_ONLY_OPS or FLOAT not in ins):
        return "untouched"
    if node.op_type in FP32_OPS or not admits(node.op_type, opset, precision, node.domain):
        return "fp32"
    return "low"


def plan_precision(model: onnx.ModelProto, precision: LowPrecision) -> PrecisionPlan:
    """The precision of every node of ``model`` (an fp32 graph) under ``precision``."""
    if precision not in LOW_PRECISIONS:
        raise PrecisionError(f"unknown low precision {precision!r}; choose one of {', '.join(LOW_PRECISIONS)}")
    if graph_precision(model) != "fp32":
        raise PrecisionError(f"the graph is already {graph_precision(model)}; convert the fp32 export")
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise PrecisionError(f"node {node.name!r} ({node.op_type}) holds a subgraph, which this converter does not")
    named = _named(model)
    types = _elem_types(named)
    opset = next((o.version for o in named.opset_import if o.domain in ("", "ai.onnx")), 0)
    kinds = {n.name: _kind(n, types, opset, precision) for n in named.graph.node}
    return PrecisionPlan(precision, kinds, {n.name: n.op_type for n in named.graph.node})


def _to_low(array: npt.NDArray[np.float32], precision: LowPrecision) -> npt.NDArray[np.generic]:
    """Round to the low type (round to nearest even); fp16 saturates at +-65504 instead of becoming inf."""
    if precision == "fp16":
        finite = np.finfo(np.float16).max
        return np.clip(array, -finite, finite).astype(np.float16)
    out: npt.NDArray[np.generic] = array.astype(ml_dtypes.bfloat16)
    return out


def _convert_tensor(t: TensorProto, precision: LowPrecision) -> TensorProto:
    low = numpy_helper.from_array(_to_low(numpy_helper.to_array(t).astype(np.float32), precision), t.name)
    return low


def convert(model: onnx.ModelProto, precision: LowPrecision) -> tuple[onnx.ModelProto, PrecisionPlan]:
    """The mixed-precision graph of ``model`` and its plan; graph I/O types are unchanged."""
    plan = plan_precision(model, precision)
    m = _named(model)
    g = m.graph
    orig = _elem_types(m)  # types in the fp32 source: only FLOAT tensors ever change
    low = LOW_TYPES[precision]
    dtype = dict(orig)
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in g.node:
        for t in node.input:
            consumers[t].append(node)

    def reads_low(t: str) -> bool:
        users = consumers.get(t, [])
        return bool(users) and all(plan.kinds[u.name] == "low" and u.op_type not in SHAPE_ONLY_OPS for u in users)

    # 1. weights read only by low-precision nodes are stored in the low type
    outputs = {o.name for o in g.output}
    for i, init in enumerate(g.initializer):
        if init.data_type == FLOAT and init.name not in outputs and reads_low(init.name):
            g.initializer[i].CopyFrom(_convert_tensor(init, precision))
            dtype[init.name] = low
    # 2. low-precision nodes produce the low type (Constant values and Cast targets follow)
    for node in g.node:
        if plan.kinds[node.name] != "low":
            continue
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == FLOAT and reads_low(node.output[0]):
                    a.t.CopyFrom(_convert_tensor(a.t, precision))
                    dtype[node.output[0]] = low
            continue
        if node.op_type == "ConstantOfShape":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_convert_tensor(a.t, precision))
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = low
        for t in node.output:
            if orig.get(t) == FLOAT:
                dtype[t] = low
    # 3. graph outputs keep their declared type: the producer writes "<name>__<low>", a Cast restores it
    tail: list[onnx.NodeProto] = []
    for out in g.output:
        declared = out.type.tensor_type.elem_type
        if dtype.get(out.name) == declared:
            continue
        inner = f"{out.name}__{precision}"
        for node in g.node:
            node.output[:] = [inner if t == out.name else t for t in node.output]
            node.input[:] = [inner if t == out.name else t for t in node.input]
        dtype[inner], orig[inner] = dtype[out.name], orig[out.name]
        dtype[out.name] = declared
        tail.append(helper.make_node("Cast", [inner], [out.name], name=f"{out.name}__to_declared", to=declared))
    # 4. every fp32-source input a node reads in the other precision goes through one shared Cast
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    suffix = {FLOAT: "fp32", low: precision}
    for node in g.node:
        kind = plan.kinds[node.name]
        if kind != "untouched" and node.op_type not in ANY_INPUT_OPS:
            want = low if kind == "low" else FLOAT
            for i, t in enumerate(node.input):
                if not t or orig.get(t) != FLOAT or dtype.get(t) == want:
                    continue
                key = (t, want)
                if key not in casts:
                    casts[key] = f"{t}__{suffix[want]}"
                    nodes.append(helper.make_node("Cast", [t], [casts[key]], name=f"{t}__cast_{suffix[want]}", to=want))
                node.input[i] = casts[key]
        nodes.append(node)
    del g.node[:]
    g.node.extend([*nodes, *tail])
    del g.value_info[:]
    del m.metadata_props[:]
    m.metadata_props.extend(
        [*(p for p in model.metadata_props if p.key != PRECISION_KEY), onnx.StringStringEntryProto(key=PRECISION_KEY)]
    )
    m.metadata_props[-1].value = precision
    checked = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(checked, full_check=True)
    for before, after in zip(model.graph.input, checked.graph.input, strict=True):
        if before.type != after.type:
            raise PrecisionError(f"input {before.name} changed type during conversion")  # never expected
    return checked, plan


def convert_file(src: Path, dst: Path, precision: LowPrecision) -> PrecisionPlan:
    """Convert the fp32 graph at ``src`` into ``dst`` (same I/O, weights inside)."""
    converted, plan = convert(onnx.load(str(src)), precision)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    return plan


# ---------------------------------------------------------------------------------------
# Parity of the converted graphs against the fp32 graphs, in ONNX Runtime on CPU
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LowPrecisionTolerance:
    scores_atol: float  # max |diff| of the probabilities, fp16 graphs vs fp32 graphs
    cache_atol: float  # ... of the keys/values (they carry 1/tau, so they are larger than scores)
    rank_tie: float  # top-k may differ only among candidates whose fp32 scores lie this close
    reason: str


TOLERANCES: dict[str, LowPrecisionTolerance] = {
    "fp16": LowPrecisionTolerance(
        scores_atol=5e-3,
        cache_atol=3e-2,
        rank_tie=2e-3,
        reason="fp16 keeps 11 significant bits (relative rounding <= 4.9e-4 per op), compounded over the "
        "matmuls of L layers; normalisation, softmax, reductions and the output sigmoid run in fp32. "
        "Measured on the trained small model: scores 1.8e-3 to 2.6e-3, keys 1.5e-2 over several seeds; "
        "top-10 swaps needed at most 1.9e-4 over 8 seeds, so an intruder 2e-3 below the 10th best is an error",
    ),
}


@dataclass
class PrecisionReport:
    precision: str
    seed: int
    shapes: int = 0
    max_abs: dict[str, float] = field(default_factory=dict)  # per output, over all shapes
    min_topk_agreement: float = 1.0  # tie-aware (export.ranking), the lowest over all requests
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        tol = TOLERANCES[self.precision]
        limits = {"scores": tol.scores_atol}
        diffs = ", ".join(
            f"{k} {v:.2e} (tol {limits.get(k, tol.cache_atol):.0e})" for k, v in sorted(self.max_abs.items())
        )
        return (
            f"{self.precision} ONNX vs fp32 ONNX (ONNX Runtime, seed {self.seed}, {self.shapes} shapes): max |diff| "
            f"{diffs}; top-{TOP_K} agreement >= {self.min_topk_agreement:.3f} (ties within {tol.rank_tie:.0e}; tol 1.0)"
        )


def compare_pipelines(
    reference: OrtPipeline,
    candidate: OrtPipeline,
    requests: Sequence[RequestBatch],
    precision: str,
    seed: int,
    progress: Callable[[str], None] = print,
) -> PrecisionReport:
    """Run both pipelines on every request; collect max |diff| per output and the top-k agreement.

    The report's ``problems`` lists every value outside :data:`TOLERANCES` (empty when all agree).
    """
    tol = TOLERANCES[precision]
    report = PrecisionReport(precision, seed)
    for i, req in enumerate(requests):
        ref, got = reference.outputs(req), candidate.outputs(req)
        where = "x".join(str(s) for s in req.cand_item_ids.shape)
        for name in ref:
            r, c = ref[name], got[name]
            if r.shape != c.shape or r.dtype != c.dtype:
                report.problems.append(f"{name} @ request {i}: {c.dtype}{list(c.shape)} vs {r.dtype}{list(r.shape)}")
                continue
            if r.dtype == np.bool_:
                bad = int(np.count_nonzero(r != c))
                if bad:
                    report.problems.append(f"{name} @ request {i}: {bad} mask entries differ")
                continue
            if not np.isfinite(c.astype(np.float64)).all():
                report.problems.append(f"{name} @ request {i}: non-finite values")
                continue
            d = float(np.abs(r.astype(np.float64) - c.astype(np.float64)).max()) if r.size else 0.0
            report.max_abs[name] = max(report.max_abs.get(name, 0.0), d)
            limit = tol.scores_atol if name == "scores" else tol.cache_atol
            if d > limit:
                report.problems.append(f"{name} @ request {i} (B x N = {where}): max |diff| {d:.3e} > {limit:.0e}")
        if ref["scores"].shape == got["scores"].shape and ref["scores"].shape[1] > TOP_K:
            topk = compare_topk(ref["scores"], got["scores"], tol.rank_tie)
            report.min_topk_agreement = min(report.min_topk_agreement, topk.overlap)
            report.problems += [f"top-{TOP_K} @ request {i}: {x.describe()}" for x in topk.intruders[:3]]
        report.shapes += 1
        progress(f"  {precision} vs fp32 [{i + 1}/{len(requests)}] B x N = {where}")
    return report
