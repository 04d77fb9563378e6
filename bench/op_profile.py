"""(d) per operator: where ONNX Runtime spends each exported graph's time, from its own profiler.

Each graph runs in a session with ``SessionOptions.enable_profiling`` (the CPU provider, the bench's
intra-op threads, graph optimisations on as served), ``warmup`` runs, then ``runs`` profiled runs of
one request. The profiler records every kernel of every run; a node's time is its fastest run (the
machine may be shared, and preemption only ever adds time to a kernel), and an operator type's time
is the sum of its nodes' times, so the breakdown is what each kernel costs, not what the load did.
Matrix-product FLOPs (MatMul, FusedMatMul, Gemm) are counted from the input shapes the profiler
records and the weights' shapes, so the matmul rate of each graph is measured per operator against
the same limit as (d)'s table. ONNX Runtime's own GEMMs (MLAS) may run faster than the
``torch.matmul`` that sets the limit: a share above 100% says so, it is not an error.

Each graph is also timed as a served instance runs it: its own session (the served models' options), the
same request back to back, whole ``session.run`` calls (kernels, the executor between them, inputs and
outputs), enough calls per sample to last 0.2 s (``bench.timing.rate``). Issue 22's goals for the graphs
are read on these rates. (d)'s table times each stage once per round inside the in-process pipeline,
right after another runtime's run; there a small graph pays for the caches the previous run left cold
(the encoder most: compare its share back to back below with its row in the table), which is what an
in-process caller alternating the graphs sees, not the graph's rate.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from bench.roofline import graph_flops
from bench.timing import Stats, rate
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ITEM_SCORER, USER_ENCODER
from export.onnx_graphs import GraphPaths

MATMUL_OPS = ("MatMul", "FusedMatMul", "Gemm")  # the ops whose FLOPs (d) counts


@dataclass(frozen=True)
class OpTime:
    """One operator type in one graph at one shape."""

    graphs: str  # which export: this run's (``ort_fp32``) or a baseline given to the bench
    graph: str
    block_len: int
    candidates: int
    op: str
    nodes: int
    ms: float  # sum over its nodes of each node's fastest kernel time over the runs
    share: float  # of the graph's kernel time (sum of every node's time)
    gflop: float  # matrix products only (0 for other ops), from the recorded shapes

    @property
    def gflops_per_s(self) -> float:
        return self.gflop / self.ms * 1e3 if self.gflop and self.ms else 0.0


@dataclass(frozen=True)
class SteadyRate:
    """One graph run back to back on one request, as a served instance runs it (its own session, weights and
    buffers warm): (d)'s FLOPs for the graph and shape over the wall time of each ``session.run``."""

    graphs: str  # which export, as in :class:`OpTime`
    graph: str
    block_len: int
    candidates: int  # the encoder never sees them: the request's, for the record
    gflop: float
    flops_per_s: Stats  # one sample per repeat, each over enough back-to-back calls (``bench.timing.rate``)


def graph_feeds(
    paths: GraphPaths, requests: list[RequestBatch]
) -> Iterator[tuple[str, Path, int, int, dict[str, npt.NDArray[Any]]]]:
    """(graph, its file, Tb, N, its feeds) for both graphs on each request, the encoder once per block length
    (it does not see the candidates), the scorer fed the encoder's outputs for that request."""
    encoder = ort.InferenceSession(str(paths.user_encoder), providers=["CPUExecutionProvider"])
    names = [o.name for o in encoder.get_outputs()]
    encoded: set[int] = set()
    for req in requests:
        tb, n = req.hist_item_ids.shape[2], req.cand_item_ids.shape[1]
        enc_inputs = req.graph_inputs(USER_ENCODER)
        if tb not in encoded:
            encoded.add(tb)
            yield USER_ENCODER, paths.user_encoder, tb, n, enc_inputs
        cache = dict(zip(names, encoder.run(names, enc_inputs), strict=True))
        yield ITEM_SCORER, paths.item_scorer, tb, n, {**req.graph_inputs(ITEM_SCORER), **cache}


def steady_rates(
    graphs: dict[str, GraphPaths], requests: list[RequestBatch], cfg: AstroConfig, threads: int, repeats: int
) -> list[SteadyRate]:
    """Both graphs of every export on each request, each in its own session (the served models' options) run
    back to back; the encoder once per block length."""
    rows: list[SteadyRate] = []
    for label, paths in graphs.items():
        sessions: dict[Path, ort.InferenceSession] = {}
        for graph, path, tb, n, feeds in graph_feeds(paths, requests):
            if path not in sessions:
                sessions[path] = ort.InferenceSession(str(path), _options(threads), providers=["CPUExecutionProvider"])
            flops = graph_flops(cfg, graph, tb, n)
            stats = rate(partial(sessions[path].run, None, feeds), flops, repeats)
            rows.append(SteadyRate(label, graph, tb, n, flops / 1e9, stats))
    return rows


def ort_matmul_rate(size: int, repeats: int, threads: int, min_seconds: float = 0.2) -> Stats:
    """FLOP/s of ONNX Runtime's MatMul on two fp32 ``size x size`` matrices (a one-node graph), the same
    product as (d)'s ``torch.matmul`` limit: what the graphs' own runtime reaches on the friendliest shape."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 9  # what ONNX Runtime >= 1.16 reads
    session = ort.InferenceSession(model.SerializeToString(), _options(threads), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((size, size), dtype=np.float32) for n in ("a", "b")}
    return rate(partial(session.run, None, feeds), 2 * size**3, repeats, min_seconds=min_seconds)


def matmul_flops(op: str, inputs: list[list[int]]) -> int:
    """2·M·K·N times the broadcast batch of a MatMul-like node, from its input shapes (0 for other ops)."""
    if op not in MATMUL_OPS or len(inputs) < 2:
        return 0
    a, b = inputs[0], inputs[1]
    if op == "Gemm":  # 2-D; transposes only reorder M·K and K·N, the product is the same
        return 2 * a[0] * a[1] * (b[1] if b[0] in a else b[0])
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])) if len(a) > 2 or len(b) > 2 else ()
    return 2 * math.prod(batch) * a[-2] * a[-1] * b[-1]


def _input_shapes(
    node: onnx.NodeProto, recorded: list[dict[str, list[int]]], weights: dict[str, list[int]]
) -> list[list[int]]:
    """A node's input shapes: the profiler records those of the run's tensors, not of the weights."""
    run_shapes = iter(next(iter(r.values())) for r in recorded)
    return [weights[name] if name in weights else next(run_shapes, []) for name in node.input if name]


def _options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OrtPipeline and the served model
    return opts


def _session(path: Path, threads: int, prefix: Path, optimized: Path | None = None) -> ort.InferenceSession:
    opts = _options(threads)
    if optimized is not None:  # the graph as ONNX Runtime runs it: node names as the profiler reports them
        opts.optimized_model_filepath = str(optimized)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _kernels(trace: Path, optimized: Path) -> tuple[dict[str, list[float]], dict[str, tuple[str, int]]]:
    """Per node: kernel times in ms (one per run), and (op type, FLOPs per run)."""
    graph = onnx.load(str(optimized), load_external_data=False).graph
    nodes = {n.name: n for n in graph.node}
    weights = {t.name: list(t.dims) for t in graph.initializer}
    times: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, int]] = {}
    for e in json.loads(trace.read_text()):
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node, args = e["name"].removesuffix("_kernel_time"), e["args"]
        times[node].append(e["dur"] / 1e3)
        shapes = _input_shapes(nodes[node], args.get("input_type_shape", []), weights) if node in nodes else []
        info[node] = (args["op_name"], matmul_flops(args["op_name"], shapes))
    return times, info


def profile_graph(
    graphs: str,
    graph: str,
    path: Path,
    feeds: dict[str, npt.NDArray[Any]],
    block_len: int,
    candidates: int,
    threads: int,
    warmup: int,
    runs: int,
    work: Path,
) -> list[OpTime]:
    """Per-operator kernel times of one graph on ``feeds``, highest first."""
    work.mkdir(parents=True, exist_ok=True)
    session = _session(path, threads, work / graph)
    for _ in range(warmup):
        session.run(None, feeds)
    trace = Path(session.end_profiling())  # drop the warm-up runs: a fresh session profiles the timed ones
    trace.unlink()
    optimized = work / f"{graphs}-{graph}.optimized.onnx"
    session = _session(path, threads, work / graph, optimized)
    for _ in range(runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    times, info = _kernels(trace, optimized)
    trace.unlink()
    per_op: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for node, samples in times.items():
        op, flops = info[node]
        # the first run of a fresh session also plans its memory; of the rest, the fastest: on a shared machine
        # preemption only ever adds time to a kernel
        per_op[op].append((min(samples[1:] or samples), flops))
    total = sum(t for nodes in per_op.values() for t, _ in nodes)
    rows = [
        OpTime(
            graphs=graphs,
            graph=graph,
            block_len=block_len,
            candidates=candidates,
            op=op,
            nodes=len(nodes),
            ms=sum(t for t, _ in nodes),
            share=sum(t for t, _ in nodes) / total,
            gflop=sum(f for _, f in nodes) / 1e9,
        )
        for op, nodes in per_op.items()
    ]
    return sorted(rows, key=lambda r: -r.ms)


def run(
    graphs: dict[str, GraphPaths], requests: list[RequestBatch], threads: int, warmup: int, runs: int, work: Path
) -> list[OpTime]:
    """Both graphs of every export in ``graphs`` (label -> paths) on each request; the encoder once per block
    length (it does not see the candidates)."""
    rows: list[OpTime] = []
    for label, paths in graphs.items():
        for graph, path, tb, n, feeds in graph_feeds(paths, requests):
            rows += profile_graph(label, graph, path, feeds, tb, n, threads, warmup, runs, work)
    return rows
