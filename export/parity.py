"""ONNX Runtime vs PyTorch parity on fresh random requests over a grid of shapes.

Polygraphy-style: compare output names, then shapes, then values, collect every
mismatch, then raise one :class:`ParityError` naming each tensor and shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import CACHE_TENSORS, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER, USER_MASK, CacheDType
from export.onnx_graphs import GraphPaths, torch_dtype
from export.ranking import TOP_K, compare_topk
from model.astro import AstroModel, ItemScorer, UserEncoder
from model.random_inputs import random_request


@dataclass(frozen=True)
class Tolerance:
    atol: float  # max abs difference allowed on the scores (probabilities)
    cache_atol: float  # ... on the keys/values handed between the graphs
    rank_tie: float  # top-k may differ only among candidates whose reference scores lie this close
    reason: str


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(
        1e-5,
        1e-4,
        1e-6,
        "same fp32 arithmetic on both sides; ONNX Runtime fuses and reorders reductions "
        "(MatMul, LayerNorm, Softmax), which moves results by a few ulps: ~1e-7 on probabilities. "
        "Untrained scores crowd (one user in ten has a gap under 1e-6 at the 10th place) and swaps there "
        "needed up to 6e-8 over 40 seeds; a top-10 intruder 1e-6 below the 10th best is an error",
    ),
    "fp16": Tolerance(
        1e-3,
        2e-3,
        1e-4,
        "keys/values are rounded to fp16 (11-bit significand, relative error <= 4.9e-4) between the "
        "graphs, and a value near a rounding boundary may round one fp16 ulp apart in the two runtimes "
        "(~5e-4 on keys of magnitude ~1); the scorer's arithmetic stays fp32, so scores move by ~1e-5 "
        "against the fp32 PyTorch reference (5.5e-4 at worst on the trained model); top-10 swaps needed at most "
        "1.3e-6 over 40 seeds, so an intruder 1e-4 below the 10th best is an error",
    ),
}


@dataclass(frozen=True)
class Shape:
    batch: int
    block_len: int
    candidates: int
    empty_users: int = 0  # users with no history at all


def shape_grid(cfg: AstroConfig) -> list[Shape]:
    """Corners and middles: Tb=1, N=1, empty history, max batch, max Tb, max N."""
    tb_max, n_max, b_max = cfg.max_block_len, cfg.max_candidates, cfg.max_batch_size
    return [
        Shape(1, 1, 1),
        Shape(1, 1, 1, empty_users=1),
        Shape(2, tb_max, 1),
        Shape(3, max(1, tb_max // 2), 7, empty_users=1),
        Shape(1, tb_max, n_max),
        Shape(b_max, tb_max, min(n_max, 64), empty_users=2),
        Shape(b_max, 1, 3),
        Shape(4, max(1, tb_max // 3), 129),
    ]


@dataclass
class ParityReport:
    cache_dtype: str
    max_abs: dict[str, float] = field(default_factory=dict)  # per output name, over the grid
    min_topk_overlap: float = 1.0  # tie-aware (export.ranking), the lowest over the grid
    shapes: int = 0

    def summary(self) -> str:
        """One line: each figure beside the tolerance it was held to."""
        tol = TOLERANCES[self.cache_dtype]

        def figure(name: str, value: float) -> str:
            if name == USER_MASK:  # compared entry by entry: the figure counts differing entries
                return f"{name} {value:.0f} entries differ (tol 0)"
            return f"{name} {value:.2e} (tol {tol.atol if name == SCORES_OUTPUT else tol.cache_atol:.0e})"

        diffs = ", ".join(figure(k, v) for k, v in self.max_abs.items())
        return (
            f"ORT vs PyTorch ({self.cache_dtype} cache) over {self.shapes} shapes: max |diff| {diffs}; "
            f"top-{TOP_K} overlap >= {self.min_topk_overlap:.3f} (ties within {tol.rank_tie:.0e}; tol 1.0)"
        )


class ParityError(AssertionError):
    """Two runtimes disagree; the message lists every offending tensor."""


class OrtPipeline:
    """The split graphs in ONNX Runtime in this process, chained as the ensemble chains them: each graph is
    fed the inputs ``contract.tensors.GRAPH_IO`` names, from the request or from the encoder's outputs.
    Sessions are configured like the served model's (``intra_op_threads``, no spinning)."""

    def __init__(self, paths: GraphPaths, threads: int = 0) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # as the served model does: idle pool threads sleep instead of spinning on the cores the other stage needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.user = ort.InferenceSession(str(paths.user_encoder), opts, providers=["CPUExecutionProvider"])
        self.scorer = ort.InferenceSession(str(paths.item_scorer), opts, providers=["CPUExecutionProvider"])

    def encode(self, req: RequestBatch) -> dict[str, npt.NDArray[np.generic]]:
        names = [o.name for o in self.user.get_outputs()]
        return dict(zip(names, self.user.run(names, req.graph_inputs(USER_ENCODER)), strict=True))

    def score(self, req: RequestBatch, cache: dict[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.float32]:
        feeds = {**req.graph_inputs(ITEM_SCORER), **cache}
        out: npt.NDArray[np.float32] = self.scorer.run([SCORES_OUTPUT], feeds)[0]
        return out

    def __call__(self, req: RequestBatch) -> npt.NDArray[np.float32]:
        return self.score(req, self.encode(req))

    def outputs(self, req: RequestBatch) -> dict[str, npt.NDArray[np.generic]]:
        """Every output of both graphs by name: the encoder's cache and the scorer's scores."""
        cache = self.encode(req)
        return {**cache, SCORES_OUTPUT: self.score(req, cache)}


def torch_split(
    model: AstroModel, req: RequestBatch, cache_dtype: CacheDType
) -> tuple[dict[str, npt.NDArray[np.generic]], npt.NDArray[np.float32]]:
    """PyTorch reference for both graphs: (cache outputs, scores)."""
    t = req.to_torch()
    with torch.no_grad():
        keys, values, mask = UserEncoder(model, torch_dtype(cache_dtype))(*t.encoder_args())
        scores = ItemScorer(model)(*t.scorer_args(), user_keys=keys, user_values=values, user_mask=mask)
    cache = dict(zip(CACHE_TENSORS, (keys.numpy(), values.numpy(), mask.numpy()), strict=True))
    return cache, scores.numpy()


def torch_per_pair(model: AstroModel, req: RequestBatch) -> npt.NDArray[np.float32]:
    """The reference QA holds served scores to: every candidate scored by its own full pass.
    -> probabilities [B, N, T]."""
    with torch.no_grad():
        logits = model.per_pair(*req.to_torch())
    out: npt.NDArray[np.float32] = torch.sigmoid(logits).numpy()
    return out


def _compare(
    name: str, ref: npt.NDArray[np.generic], got: npt.NDArray[np.generic], atol: float, errors: list[str], where: str
) -> float:
    if ref.shape != got.shape or ref.dtype != got.dtype:
        errors.append(f"{name} @ {where}: PyTorch {ref.dtype}{list(ref.shape)} vs ORT {got.dtype}{list(got.shape)}")
        return float("inf")
    if ref.dtype == np.bool_:
        bad = int(np.count_nonzero(ref != got))
        if bad:
            errors.append(f"{name} @ {where}: {bad} mask entries differ")
        return float(bad)
    if not np.isfinite(got).all():
        errors.append(f"{name} @ {where}: ORT produced non-finite values")
    diff = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max()) if ref.size else 0.0
    if diff > atol:
        errors.append(f"{name} @ {where}: max |diff| {diff:.3e} > atol {atol:.1e}")
    return diff


def check_ort_parity(
    model: AstroModel,
    paths: GraphPaths,
    cache_dtype: CacheDType,
    shapes: Sequence[Shape],
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> ParityReport:
    """Raise ParityError unless ORT matches PyTorch within TOLERANCES[cache_dtype] on every shape."""
    tol = TOLERANCES[cache_dtype]
    rng = np.random.default_rng(seed)
    ort_pipe = OrtPipeline(paths)
    report = ParityReport(cache_dtype)
    errors: list[str] = []
    for i, shape in enumerate(shapes):
        where = f"B={shape.batch} Tb={shape.block_len} N={shape.candidates} empty={shape.empty_users}"
        progress(f"  parity [{i + 1}/{len(shapes)}] {where}")
        req = random_request(model.cfg, rng, shape.batch, shape.block_len, shape.candidates, shape.empty_users)
        ref_cache, ref_scores = torch_split(model, req, cache_dtype)  # the same cache dtype: compare the handoff
        if cache_dtype != "fp32":
            _, ref_scores = torch_split(model, req, "fp32")  # scores always against the fp32 reference
        cache = ort_pipe.encode(req)
        if set(cache) != set(CACHE_TENSORS):
            errors.append(f"user_encoder outputs {sorted(cache)} != expected {sorted(CACHE_TENSORS)}")
            break
        for name in CACHE_TENSORS:
            d = _compare(name, ref_cache[name], cache[name], tol.cache_atol, errors, where)
            report.max_abs[name] = max(report.max_abs.get(name, 0.0), d)
        # score the ORT cache (what the ensemble does), against PyTorch end to end
        scores = ort_pipe.score(req, cache)
        d = _compare(SCORES_OUTPUT, ref_scores, scores, tol.atol, errors, where)
        report.max_abs[SCORES_OUTPUT] = max(report.max_abs.get(SCORES_OUTPUT, 0.0), d)
        if scores.shape == ref_scores.shape and shape.candidates > TOP_K:
            topk = compare_topk(ref_scores, scores, tol.rank_tie)
            report.min_topk_overlap = min(report.min_topk_overlap, topk.overlap)
            errors += [f"top-{TOP_K} @ {where}: {i.describe(model.cfg.tasks)}" for i in topk.intruders[:3]]
        report.shapes += 1
    if errors:
        raise ParityError(
            f"ONNX Runtime disagrees with PyTorch ({cache_dtype} cache; {tol.reason}):\n  " + "\n  ".join(errors)
        )
    return report


def load_graph_paths(directory: Path) -> GraphPaths:
    return GraphPaths(directory / "user_encoder.onnx", directory / "item_scorer.onnx")
