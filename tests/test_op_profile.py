"""The exported graphs' form and (d)'s per-operator profile: ONNX Runtime's profiler sees every matrix
product (d) counts, and the graphs stay plain default-domain ONNX (they also go to TensorRT and Triton's
onnxruntime backend). Timings are never asserted; only what the profiler recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from bench import op_profile, report, roofline
from bench.timing import Stats
from bench.workload import make_request
from contract.tensors import ITEM_SCORER, USER_ENCODER, CacheDType
from export.onnx_graphs import GraphPaths
from model.astro import AstroModel


def test_matmul_flops_from_shapes() -> None:
    assert op_profile.matmul_flops("MatMul", [[1, 3, 1024, 64], [3, 64, 192]]) == 2 * 3 * 1024 * 64 * 192
    assert op_profile.matmul_flops("MatMul", [[2, 5, 7], [7, 4]]) == 2 * 2 * 5 * 7 * 4
    assert op_profile.matmul_flops("Gemm", [[5, 7], [7, 4]]) == 2 * 5 * 7 * 4
    assert op_profile.matmul_flops("Add", [[5, 7], [5, 7]]) == 0


@pytest.mark.parametrize("graph", [USER_ENCODER, ITEM_SCORER])
def test_graphs_are_plain_onnx_without_einsum(tiny_graphs: Callable[[CacheDType], GraphPaths], graph: str) -> None:
    """Default-domain ops only (no contrib op a TensorRT or Triton onnxruntime target may lack), and the
    per-block projections as MatMul, not Einsum (which ONNX Runtime runs through a generic loop)."""
    paths = tiny_graphs("fp32")
    proto = onnx.load(str(paths.user_encoder if graph == USER_ENCODER else paths.item_scorer))
    ops = {(n.domain or "ai.onnx", n.op_type) for n in proto.graph.node}
    assert {domain for domain, _ in ops} == {"ai.onnx"}, sorted(ops)
    assert ("ai.onnx", "Einsum") not in ops and ("ai.onnx", "MatMul") in ops


def test_profile_sees_every_counted_matmul(
    tiny_model: AstroModel, tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path
) -> None:
    """The FLOPs of the MatMul kernels ONNX Runtime ran (from the profiler's shapes and the weights') equal
    (d)'s formulas exactly: no product the formulas miss (an Einsum, B·N·H tiny GEMMs) and none they add."""
    cfg = tiny_model.cfg
    tb, n = cfg.max_block_len, 40
    rows = op_profile.run({"ort_fp32": tiny_graphs("fp32")}, [make_request(cfg, 0, 1, tb, n)], 1, 1, 3, tmp_path)
    for graph, flops in (
        (USER_ENCODER, roofline.encoder_flops(cfg, 1, tb)),
        (ITEM_SCORER, roofline.scorer_flops(cfg, 1, tb, n)),
    ):
        ops = [r for r in rows if r.graph == graph]
        assert round(sum(r.gflop for r in ops) * 1e9) == flops, graph
        assert np.isclose(sum(r.share for r in ops), 1.0) and all(r.ms >= 0 and r.nodes >= 1 for r in ops)
    r = SimpleNamespace(  # the fields of bench.results.Results the (d) per-operator template reads
        matmul_flops=Stats.of([1e10]),
        ort_matmul_flops=op_profile.ort_matmul_rate(64, 1, 1, min_seconds=0.01),
        settings={"matmul_size": 64},
        op_profile=rows,
        steady=op_profile.steady_rates({"ort_fp32": tiny_graphs("fp32")}, [make_request(cfg, 0, 1, tb, n)], cfg, 1, 1),
    )
    template = report.ENV.get_template("op_profile.md.j2")
    rendered = template.render(r=r, cfg=cfg, op_groups=report.op_groups(r))  # type: ignore[arg-type]
    assert rendered.count("**ort_fp32 ") == 2 and "| MatMul |" in rendered
    assert rendered.count("Run back to back, whole `session.run` calls") == 2
    assert "ONNX Runtime's MatMul on the same 64² fp32 matrices" in rendered


def test_graph_goals_read_the_back_to_back_rates(
    tiny_model: AstroModel, tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path
) -> None:
    """Each graph timed back to back carries (d)'s FLOPs for its shape; the encoder is timed once per Tb. The
    goal rows read those rates and still show the in-process pipeline's; without them, the pipeline's alone."""
    cfg = tiny_model.cfg
    tb, counts = cfg.max_block_len, (8, 40)
    requests = [make_request(cfg, 0, 1, tb, n) for n in counts]
    steady = op_profile.steady_rates({"ort_fp32": tiny_graphs("fp32")}, requests, cfg, 1, 2)
    assert [(s.graph, s.candidates) for s in steady] == [(USER_ENCODER, 8), (ITEM_SCORER, 8), (ITEM_SCORER, 40)]
    assert round(steady[0].gflop * 1e9) == roofline.encoder_flops(cfg, 1, tb)
    assert round(steady[2].gflop * 1e9) == roofline.scorer_flops(cfg, 1, tb, 40)
    peak = min(s.flops_per_s.median for s in steady)  # every graph at the limit or above: both goals met
    piped = [
        roofline.Efficiency(f"ort_fp32 {stage}", tb, n, 0.0, 1.0, 0.0, 0.01)
        for stage in ("encoder", "scorer")
        for n in counts
    ]
    r = SimpleNamespace(matmul_flops=Stats.of([peak]), steady=steady, efficiency=piped, op_profile=[], runtimes=[])
    r.served = SimpleNamespace(levels=[])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "ENCODER_GOAL_TB", tb)
        mp.setattr(report, "SCORER_GOAL_MIN_N", 8)
        rows = {g.goal: g for g in report.speed_goals(r)}  # type: ignore[arg-type]
        assert all(g.met for g in rows.values()) and len(rows) == 2
        assert all("inside the in-process pipeline" in g.measured and ": 1%" in g.measured for g in rows.values())
        r.steady = []
        assert not any(g.met for g in report.speed_goals(r))  # type: ignore[arg-type]
