"""Two runtimes' encoder -> scorer chains compared through Polygraphy's ``Comparator``.

A chain is a pair of Polygraphy runners (``TrtRunner`` over an engine, ``OnnxrtRunner`` over an
ONNX graph), run the way the ensemble runs them: the encoder on the user's history, the scorer on
the request and the encoder's keys/values. :func:`compare_chains` feeds both chains the same
requests and checks, with Polygraphy's ``CompareFunc.simple`` and per-output tolerances
(:data:`TOLERANCES`, named per precision with their reason):

1. the encoders' outputs (``user_keys``, ``user_values``, ``user_mask`` exactly);
2. the scorers on the *reference* cache (the scorer alone);
3. the candidate's scorer on its *own* encoder's cache against the reference chain (end to end);
4. the end-to-end top-k ranking (``export/ranking.py``): swaps only between near ties.

Every mismatch is collected and named (which comparison, request, tensor, max abs/rel diff)
before the caller raises. Polygraphy imports each runtime lazily: this module loads anywhere, and
two ONNX Runtime chains run it on machines without TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from contract.request_batch import RequestBatch
from contract.tensors import CACHE_TENSORS, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER, USER_KEYS, USER_MASK, USER_VALUES
from export.ranking import TOP_K, topk_intruders

Arrays = dict[str, npt.NDArray[Any]]


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


class Chain(NamedTuple):
    """An encoder runner and a scorer runner (Polygraphy ``BaseRunner``s), chained as the ensemble chains them."""

    encoder: Any
    scorer: Any


def _mismatches(label: str, accuracy: Any, run_results: Any) -> list[str]:
    """One line per output that failed in Polygraphy's ``AccuracyResults``, with its largest differences."""
    problems = []
    for result in accuracy:
        for _pair, iterations in result.items():
            for i, outputs in enumerate(iterations):
                for name, compared in outputs.items():
                    if bool(compared):
                        continue
                    stats = getattr(compared, "max_absdiff", None)
                    detail = (
                        f"max |diff| {compared.max_absdiff:.3g}, max rel {compared.max_reldiff:.3g}"
                        if stats is not None
                        else "outputs differ"
                    )
                    problems.append(f"{label}, request {i}: {name}: {detail}")
    if not problems and not accuracy:
        names = [name for name, _ in run_results.items()]
        problems.append(f"{label}: Polygraphy compared nothing between {names} (missing outputs?)")
    return problems


def compare_chains(
    reference: Chain, candidate: Chain, requests: Sequence[RequestBatch], tol: Tolerance, tasks: tuple[str, ...] = ()
) -> list[str]:
    """Every disagreement of ``candidate`` with ``reference`` on ``requests``; empty when they agree."""
    from polygraphy.comparator import Comparator, CompareFunc, RunResults

    cache_cmp = CompareFunc.simple(
        check_shapes=True,
        atol={USER_KEYS: tol.cache_atol, USER_VALUES: tol.cache_atol, USER_MASK: 0.0},
        rtol={USER_KEYS: tol.cache_rtol, USER_VALUES: tol.cache_rtol, USER_MASK: 0.0},
    )
    scores_cmp = CompareFunc.simple(check_shapes=True, atol={SCORES_OUTPUT: tol.scores_atol}, rtol={SCORES_OUTPUT: 0.0})

    encoded = Comparator.run([reference.encoder, candidate.encoder], data_loader=_feeds(requests, USER_ENCODER))
    (_, ref_caches), (_, own_caches) = encoded.items()
    scored = Comparator.run([reference.scorer, candidate.scorer], data_loader=_feeds(requests, ITEM_SCORER, ref_caches))
    own = Comparator.run([candidate.scorer], data_loader=_feeds(requests, ITEM_SCORER, own_caches))
    (ref_name, ref_scores), _ = scored.items()
    ((own_name, own_scores),) = own.items()
    chained = RunResults([(ref_name, ref_scores), (f"{own_name} after its encoder", own_scores)])

    problems = _mismatches("encoder", Comparator.compare_accuracy(encoded, compare_func=cache_cmp), encoded)
    alone = Comparator.compare_accuracy(scored, compare_func=scores_cmp)
    problems += _mismatches("scorer on the reference cache", alone, scored)
    problems += _mismatches("encoder -> scorer", Comparator.compare_accuracy(chained, compare_func=scores_cmp), chained)
    for i, (ref, got) in enumerate(zip(ref_scores, own_scores, strict=True)):
        intruders = topk_intruders(ref[SCORES_OUTPUT], got[SCORES_OUTPUT], tol.rank_tie)
        problems += [f"encoder -> scorer, request {i}: top-{TOP_K}: {x.describe(tasks)}" for x in intruders]
    return problems


def _feeds(
    requests: Sequence[RequestBatch], graph: str, caches: Sequence[Mapping[str, npt.NDArray[Any]]] = ()
) -> list[Arrays]:
    """Each request's inputs of ``graph`` (the scorer's cache from ``caches``, one per request)."""
    if graph == USER_ENCODER:
        return [dict(r.graph_inputs(USER_ENCODER)) for r in requests]
    return [
        {**r.graph_inputs(ITEM_SCORER), **{name: np.asarray(cache[name]) for name in CACHE_TENSORS}}
        for r, cache in zip(requests, caches, strict=True)
    ]
