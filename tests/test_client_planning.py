"""Call planning: candidates split into chunks within ``max_candidates``, every chunk of a user with the same
encoder inputs, scores reassembled in request order.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from client_samples import (
    ENCODER_INPUTS,
    SPEC,
    expected_scores,
    fake_scores,
    request,
)

from client import (
    ChunkRow,
    assemble_scores,
    build_call_inputs,
    encoder_inputs,
    plan_calls,
    split_evenly,
    validate_inputs,
    validate_request,
)
from contract.blocks import build_blocks
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, HISTORY_INPUTS

# ---- call planning -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 512, 1024])
@pytest.mark.parametrize("n", [1, 2, 5, 511, 512, 513, 1024, 1025, 3000])
def test_split_evenly_covers_in_order_within_limit(n: int, limit: int) -> None:
    pieces = split_evenly(n, limit)
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))  # contiguous, in order
    sizes = [b - a for a, b in pieces]
    assert max(sizes) <= limit and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(pieces) == -(-n // limit)  # the fewest possible


def test_split_evenly_balances_the_remainder() -> None:
    assert split_evenly(1025, 1024) == [(0, 513), (513, 1025)]
    assert split_evenly(10, 4) == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="n=0"):
        split_evenly(0, 4)


@pytest.mark.parametrize("max_cand", [1, 4, 512])
@pytest.mark.parametrize("counts", [[1], [3], [600], [5, 1, 1200, 7, 7, 513, 2, 30, 1, 1, 9]])
def test_plan_calls_covers_every_candidate_once_within_limits(counts: list[int], max_cand: int) -> None:
    calls = plan_calls(counts, max_cand)
    seen: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(counts))}
    for row in calls:
        assert 1 <= row.size <= max_cand
        seen[row.request].append((row.start, row.stop))
    for i, n in enumerate(counts):
        spans = seen[i]
        assert spans == split_evenly(n, max_cand)  # each request's chunks, in candidate order
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert [r.request for r in calls] == sorted(r.request for r in calls)  # request order
    assert len(calls) == sum(-(-n // max_cand) for n in counts)  # one call per chunk, the fewest chunks


def test_plan_calls_never_packs_rows() -> None:
    """One B=1 call per chunk: rows packed into one call would share one response-cache key."""
    calls = plan_calls([2, 500, 3, 1030], max_candidates=512)
    assert [(r.request, r.start, r.stop) for r in calls] == [
        (0, 0, 2), (1, 0, 500), (2, 0, 3), (3, 0, 344), (3, 344, 687), (3, 687, 1030)
    ]  # fmt: skip
    with pytest.raises(TypeError):
        plan_calls([2, 500], 8, 512)  # type: ignore[call-arg]  # the old (counts, max_batch_size, max_candidates)


@pytest.mark.parametrize(("counts", "max_cand"), [([1], 512), ([3, 40, 1, 17], 8), ([1300, 2, 513], 512)])
def test_calls_hold_their_own_chunk_and_scores_reassemble_in_order(counts: list[int], max_cand: int) -> None:
    spec = ServingSpec(2, max_cand, SPEC.max_block_len, ("a", "b", "c"), SPEC.blocks, SPEC.behaviors, SPEC.scenarios)
    reqs = [validate_request(request(n, seed=i, n_hist=3 * i)) for i, n in enumerate(counts)]
    calls = plan_calls(counts, max_cand)
    results = []
    for row, raw in zip(calls, build_call_inputs(calls, reqs, spec), strict=True):
        inputs = validate_inputs(raw, spec)
        req = reqs[row.request]
        own = np.asarray(req.candidates)[row.start : row.stop]
        assert inputs[CANDIDATE_INPUT].tolist() == [own.tolist()]  # B=1, exactly its chunk, no padding
        assert inputs["request_scenario"].tolist() == [[req.scenario]]
        assert inputs["request_timestamp"].tolist() == [[req.timestamp]]
        lone = build_blocks(req.history, spec)  # the user's own Tb, whoever else is in the batch
        for name, field in zip(HISTORY_INPUTS, ("item_ids", "behaviors", "scenarios", "timestamps"), strict=True):
            np.testing.assert_array_equal(inputs[name], getattr(lone, field)[None])
        results.append(fake_scores(inputs, spec.n_tasks))
    out = assemble_scores(calls, results, counts, spec.n_tasks)
    assert [o.shape for o in out] == [(n, 3) for n in counts]
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(req, spec))


def test_every_chunk_of_a_user_sends_byte_identical_encoder_inputs() -> None:
    """What Triton's response cache needs for chunk 2.. to hit chunk 1: the same bytes, whatever else is sent."""
    user = validate_request(request(20, seed=3, n_hist=30))
    short, long = validate_request(request(3, seed=4, n_hist=2)), validate_request(request(3, seed=5, n_hist=60))
    alone = build_call_inputs(plan_calls([20], 8), [user], SPEC)
    assert len(alone) == 3
    mixed = build_call_inputs(plan_calls([3, 20, 3], 8), [short, user, long], SPEC)[1:4]
    for inputs in [*alone, *mixed]:
        for name in ENCODER_INPUTS:
            assert inputs[name].shape[0] == 1 and inputs[name].tobytes() == alone[0][name].tobytes(), name
    assert alone[0]["hist_item_ids"].shape[2] == build_blocks(user.history, SPEC).block_len <= SPEC.max_block_len
    encoder = encoder_inputs(user, SPEC)
    assert encoder.keys() == set(ENCODER_INPUTS)
    assert all(encoder[n].tobytes() == alone[0][n].tobytes() for n in ENCODER_INPUTS)
    assert encoder_inputs(short, SPEC)["hist_item_ids"].shape[2] < encoder["hist_item_ids"].shape[2]


def test_assemble_refuses_a_plan_that_misses_candidates() -> None:
    with pytest.raises(AssertionError, match="covered"):
        assemble_scores([ChunkRow(0, 0, 2)], [np.zeros((1, 2, 1), np.float32)], [3], 1)
