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
    )
    template = report.ENV.get_template("op_profile.md.j2")
    rendered = template.render(r=r, cfg=cfg, op_groups=report.op_groups(r))  # type: ignore[arg-type]
    assert rendered.count("**ort_fp32 ") == 2 and "| MatMul |" in rendered
    assert "ONNX Runtime's MatMul on the same 64² fp32 matrices" in rendered
