"""The gRPC client without a Triton server: validation, plausibility, call planning, padding,
waiting and retrying, round-robin over several addresses, the served vocabulary, CLI.

Where the wire matters (gRPC's retries and waiting, headers, error mapping, chunked calls,
balancing) the client talks over real gRPC to ``StubTriton``, a few-line in-process servicer of
Triton's own protocol (``tritonclient.grpc.service_pb2_grpc``). Its scores are a known
function of each row's inputs, not the model: it checks the client's plumbing only.
Tests against the real server live elsewhere (``test_client_replicas.py`` for several).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs installed; the tests only start a server
import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from client import (
    Allow,
    AstroClient,
    AsyncAstroClient,
    ChunkRow,
    EventHistory,
    RequestError,
    RetryPolicy,
    ScoreRequest,
    ServerError,
    ServerUnavailableError,
    assemble_scores,
    build_call_inputs,
    encoder_inputs,
    grpc_target,
    is_model_loading,
    plan_calls,
    request_from_json,
    spec_from_model_config,
    split_evenly,
    validate_inputs,
    validate_request,
)
from client.__main__ import main, parse_header
from client.astro_client import PROBE_TIMEOUT_S
from client.channel import PROBE_METHODS, RETRYABLE_STATUS_CODES, WAITING_METHODS, HeaderPlugin, channel_args
from client.routing import route_key, user_route_key
from contract.blocks import build_blocks
from contract.config import AstroConfig
from contract.routing import ROUTE_KEY_HEADER
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, HISTORY_INPUTS
from contract.validation import TIMESTAMP_END

REPO = Path(__file__).resolve().parents[1]
SPEC = ServingSpec.from_config(AstroConfig.from_name("tiny"))  # max_batch_size=8, max_candidates=512, Tb<=12
I64 = np.int64
F32 = npt.NDArray[np.float32]
NOW = 1_700_000_000


def history(n: int = 5, seed: int = 0) -> EventHistory:
    rng = np.random.default_rng(seed)
    return EventHistory(
        rng.integers(1, 10_000, n, dtype=I64),
        rng.integers(0, 4, n, dtype=I64),
        rng.integers(0, 4, n, dtype=I64),
        rng.integers(1_600_000_000, 1_700_000_000, n, dtype=I64),
    )


def request(n_cand: int = 3, seed: int = 0, n_hist: int = 5) -> ScoreRequest:
    rng = np.random.default_rng(seed + 1000)
    return ScoreRequest(history(n_hist, seed), rng.integers(1, 1_000_000, n_cand, dtype=I64), seed % 4, NOW)


def call_inputs(batch: int = 2, nb: int = SPEC.n_blocks, tb: int = 4, n: int = 3) -> dict[str, Any]:
    return {
        **{name: np.ones((batch, nb, tb), dtype=I64) for name in HISTORY_INPUTS},
        "request_scenario": np.zeros((batch, 1), dtype=I64),
        "request_timestamp": np.full((batch, 1), NOW, dtype=I64),
        CANDIDATE_INPUT: np.ones((batch, n), dtype=I64),
    }


def raises(match_all: list[str], fn: Any, *args: Any, **kwargs: Any) -> RequestError:
    """``fn`` raises RequestError whose message holds every string of ``match_all``."""
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    for part in match_all:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"
    return info.value


def with_history(h: EventHistory, **fields: Any) -> EventHistory:
    return EventHistory(
        **{f: fields.get(f, getattr(h, f)) for f in ("item_ids", "behaviors", "scenarios", "timestamps")}
    )


# ---- one request: the integer rule ---------------------------------------------------------


def test_valid_request_is_normalised_to_int64() -> None:
    raw = ScoreRequest(
        EventHistory([5, 6], [0, 1], [2, 3], [10, 20]),  # type: ignore[arg-type]  # lists, as a caller may pass
        [7, 8, 9],
        np.int32(2),  # type: ignore[arg-type]
        NOW,
    )
    req = validate_request(raw)
    assert isinstance(req.candidates, np.ndarray) and req.candidates.dtype == I64
    assert req.candidates.tolist() == [7, 8, 9]
    assert all(getattr(req.history, f).dtype == I64 for f in ("item_ids", "behaviors", "scenarios", "timestamps"))
    assert type(req.scenario) is int and req.scenario == 2


def test_new_user_with_empty_history_lists_is_valid() -> None:
    req = validate_request(ScoreRequest(EventHistory([], [], [], []), [1], 0, 0))  # type: ignore[arg-type]
    assert len(req.history) == 0 and req.history.item_ids.dtype == I64


def test_history_lengths_must_match() -> None:
    h = EventHistory(np.arange(1, 4), np.zeros(2, I64), np.zeros(3, I64), np.zeros(3, I64))
    raises(["history", "item_ids=3", "behaviors=2", "scenarios=3"], validate_request, ScoreRequest(h, [1], 0, 0))


@pytest.mark.parametrize(
    ("field", "bad", "parts"),
    [
        ("item_ids", np.array([1.0, 2.0, 3.0]), ["dtype float64", "element 0: 1.0"]),
        ("behaviors", np.array([True, False, True]), ["dtype bool"]),
        ("scenarios", np.array([1, "x", 2], dtype=object), ["element 1 is 'x' (str)"]),
        ("timestamps", np.array([1.5, 2.5, 3.5], dtype=np.float32), ["dtype float32"]),
        ("timestamps", [NOW, 1.7e9, NOW], ["element 1 is 1700000000.0 (float)", "not 1.7e9"]),
        ("item_ids", [1, True, 3], ["element 1 is True (bool)"]),
    ],
)
def test_history_fields_must_be_ints_not_cast(field: str, bad: Any, parts: list[str]) -> None:
    h = with_history(history(3), **{field: bad})
    raises([f"history.{field}", *parts], validate_request, ScoreRequest(h, [1], 0, 0))


def test_negative_item_ids_are_legal() -> None:
    """Item ids are signed int64 hashed inside the graph: negative ones are valid ids, not errors."""
    h = history(5)
    items = h.item_ids.copy()
    items[3] = -42
    items[4] = -(2**63)
    out = validate_request(ScoreRequest(with_history(h, item_ids=items), [-7, 0, 2**63 - 1], 0, 0))
    assert out.history.item_ids[3] == -42 and list(out.candidates) == [-7, 0, 2**63 - 1]  # candidate 0 is an id


@pytest.mark.parametrize(
    ("candidates", "parts"),
    [
        ([], ["candidates", "must not be empty", "(0,)"]),
        (np.zeros(0, I64), ["candidates", "must not be empty"]),
        ([[1, 2], [3, 4]], ["candidates", "1-D", "(2, 2)"]),
        ([1, 2.5], ["candidates", "element 1 is 2.5 (float)"]),
        ([True, False], ["candidates", "element 0 is True (bool)"]),
        (["abc"], ["candidates", "element 0 is 'abc' (str), not an integer"]),
        (["a", "b"], ["candidates", "element 0 is 'a' (str)"]),
        (np.array([1, 2**63], dtype=np.uint64), ["candidates", str(2**63), "index 1", "int64 maximum"]),
        ([1, 2**70], ["candidates", "element 1 is " + str(2**70), "outside int64"]),
        ([[1], [2, 3]], ["candidates", "cannot be read"]),  # ragged
        ("123", ["candidates", "sequence of integers", "'123' (str)"]),
        (None, ["candidates", "None"]),
    ],
)
def test_candidate_errors_name_field_value_and_limit(candidates: Any, parts: list[str]) -> None:
    raises(parts, validate_request, ScoreRequest(history(), candidates, 0, 0))


@pytest.mark.parametrize(
    ("scenario", "timestamp", "parts"),
    [
        (1.0, 0, ["scenario", "must be an integer", "1.0 (float)"]),
        (True, 0, ["scenario", "True (bool)"]),
        ("home", 0, ["scenario", "'home' (str)"]),
        (None, 0, ["scenario", "None"]),
        (2**63, 0, ["scenario", str(2**63), "int64 maximum"]),
        (0, -1, ["timestamp", "value -1", f"[0, {TIMESTAMP_END})"]),
        (0, 1.7e9, ["timestamp", "1700000000.0 (float)", "not 1.7e9"]),
        (0, np.bool_(True), ["timestamp", "bool"]),
        (0, 2**64, ["timestamp", str(2**64), "int64 maximum"]),
    ],
)
def test_scalar_errors_name_field_value_and_limit(scenario: Any, timestamp: Any, parts: list[str]) -> None:
    raises(parts, validate_request, ScoreRequest(history(), [1], scenario, timestamp))


def test_not_a_history_or_request() -> None:
    raises(["history", "EventHistory", "dict"], validate_request, ScoreRequest({}, [1], 0, 0))  # type: ignore[arg-type]
    raises(["request", "ScoreRequest", "dict"], validate_request, {})


def test_batch_errors_name_the_request_index() -> None:
    batch = [request(), ScoreRequest(history(), [], 0, 0)]
    with AstroClient("127.0.0.1:1", spec=SPEC) as c:  # refused before any connection is tried
        err = raises(["requests[1].candidates", "empty"], c.score_batch, batch)
    assert err.field == "requests[1].candidates"


# ---- one request: likely mistakes, refused unless allowed ----------------------------------------

H = history(4)
PLAUSIBILITY: list[tuple[str, ScoreRequest, Allow, list[str]]] = [
    ("milliseconds", ScoreRequest(H, [1], 0, NOW * 1000), Allow(any_timestamp=True),
     ["timestamp", str(NOW * 1000), f"[0, {TIMESTAMP_END})", "milliseconds? divide by 1000", "--allow-any-timestamp"]),
    ("negative request time", ScoreRequest(H, [1], 0, -3), Allow(any_timestamp=True), ["timestamp", "value -3"]),
    ("history in milliseconds", ScoreRequest(with_history(H, timestamps=H.timestamps * 1000), [1], 0, NOW),
     Allow(any_timestamp=True), ["history.timestamps", "at index 0", "(one of 4)", "plausible unix seconds"]),
    ("negative history time", ScoreRequest(with_history(H, timestamps=np.array([5, -5, 6, 7])), [1], 0, NOW),
     Allow(any_timestamp=True), ["history.timestamps", "-5", "index 1"]),
    ("padding item", ScoreRequest(with_history(H, item_ids=np.array([4, 0, 0, 9])), [1], 0, NOW),
     Allow(padding_items=True),
     ["history.item_ids", "value 0 at index 1 is the padding item id (2 in all)", "dropped", "--allow-padding-items"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "req", "allow", "parts"), PLAUSIBILITY, ids=[c[0] for c in PLAUSIBILITY])
def test_likely_mistakes_are_refused_unless_allowed(
    case: str, req: ScoreRequest, allow: Allow, parts: list[str]
) -> None:
    raises(parts, validate_request, req)
    validate_request(req, allow=allow)  # the flag lets exactly this through
    others = Allow(**{k: True for k in ("unknown_ids", "any_timestamp", "padding_items") if not getattr(allow, k)})
    raises(parts[:1], validate_request, req, allow=others)  # and no other flag does


VOCAB: list[tuple[str, ScoreRequest, list[str]]] = [
    ("behaviour", ScoreRequest(with_history(H, behaviors=np.array([0, 1, 4, 3])), [1], 0, NOW),
     ["history.behaviors", "value 4 at index 2", "[0, 4)", "0=play, 1=like, 2=share, 3=skip", "--allow-unknown-ids"]),
    ("negative behaviour", ScoreRequest(with_history(H, behaviors=np.array([0, -1, 1, 3])), [1], 0, NOW),
     ["history.behaviors", "value -1 at index 1"]),
    ("history scenario", ScoreRequest(with_history(H, scenarios=np.array([0, 1, 2, 9])), [1], 0, NOW),
     ["history.scenarios", "value 9 at index 3", "0=home, 1=search, 2=radio, 3=playlist"]),
    ("request scenario", ScoreRequest(H, [1], 12345, NOW), ["scenario", "value 12345 is outside the served scenario"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "req", "parts"), VOCAB, ids=[c[0] for c in VOCAB])
def test_ids_outside_the_served_vocabularies_are_refused_unless_allowed(
    case: str, req: ScoreRequest, parts: list[str]
) -> None:
    validate_request(req)  # without the served spec there is no vocabulary to check
    raises(parts, validate_request, req, vocab=SPEC)
    validate_request(req, vocab=SPEC, allow=Allow(unknown_ids=True))


# ---- JSON requests -------------------------------------------------------------------------------


def cli_request(**override: Any) -> dict[str, Any]:
    h = history(4, seed=7)
    d: dict[str, Any] = {
        "history": {f: getattr(h, f).tolist() for f in ("item_ids", "behaviors", "scenarios", "timestamps")},
        "candidates": [11, 12, 13],
        "scenario": 1,
        "timestamp": NOW,
    }
    d.update(override)
    return d


def test_json_request_reads_integers() -> None:
    req = request_from_json(cli_request(), "requests[0]")
    assert req.candidates.tolist() == [11, 12, 13] and req.scenario == 1  # type: ignore[union-attr]
    assert req.history.item_ids.dtype == I64 and len(req.history) == 4
    new = request_from_json(
        cli_request(history={key: [] for key in ("item_ids", "behaviors", "scenarios", "timestamps")})
    )
    assert len(new.history) == 0


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    ("obj", "parts"),
    [
        ([], ["request", "JSON object"]),
        ({**without(cli_request(), "candidates"), "candidate": [1]},
         ["request", "unknown field 'candidate' (did you mean 'candidates'?)",
          "history, candidates, scenario, timestamp"]),
        (cli_request(user="u1"), ["request", "unknown field 'user'"]),
        (cli_request(history={**cli_request()["history"], "item_id": [1]}),
         ["history", "unknown field 'item_id' (did you mean 'item_ids'?)"]),
        (without(cli_request(), "history"), ["request", "lacks keys ['history']", "new user", '"item_ids": []']),
        ({"candidates": [1]}, ["request", "lacks keys", "history", "scenario", "timestamp"]),
        (cli_request(history=[]), ["history", "JSON object", "new user", '"timestamps": []']),
        (cli_request(history={"item_ids": []}), ["history", "lacks keys", "behaviors", "use []"]),
        (cli_request(history={"item_ids": [1.5], "behaviors": [0], "scenarios": [0], "timestamps": [1]}),
         ["history.item_ids", "element 0 is 1.5 (float)"]),
        (cli_request(candidates=["abc"]), ["candidates", "element 0 is 'abc' (str), not an integer"]),
        (cli_request(candidates=[1, 2, "3"]), ["candidates", "element 2 is '3' (str)"]),
        (cli_request(candidates=5), ["candidates", "sequence of integers", "5 (int)"]),
        (cli_request(scenario="radio"), ["scenario", "'radio' (str)"]),
        (cli_request(timestamp=1.7e9), ["timestamp", "1700000000.0 (float)", "not 1.7e9"]),
    ],
)  # fmt: skip
def test_json_request_errors(obj: Any, parts: list[str]) -> None:
    raises(parts, request_from_json, obj)


def test_json_errors_in_a_list_name_the_entry() -> None:
    raises(
        ["requests[2].candidates", "element 0 is 'abc'"],
        request_from_json,
        cli_request(candidates=["abc"]),
        "requests[2]",
    )


# ---- the raw tensors of one call ---------------------------------------------------------


def test_valid_call_inputs_pass() -> None:
    out = validate_inputs(call_inputs(), SPEC)
    assert set(out) == set(call_inputs()) and all(a.dtype == I64 for a in out.values())


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        (lambda d: d.pop("request_scenario"), ["inputs", "missing ['request_scenario']"]),
        (lambda d: d.update(extra=np.zeros((2, 1), I64)), ["inputs", "unknown ['extra']"]),
        (lambda d: d.update(cand_item_ids=np.ones((2, 3), np.int32)), ["cand_item_ids", "dtype int32", "int64"]),
        (lambda d: d.update(hist_behaviors=np.ones((2, 3, 4))), ["hist_behaviors", "dtype float64", "int64"]),
        (lambda d: d.update(hist_item_ids=np.ones((2, 4), I64)), ["hist_item_ids", "3-D", "(2, 4)"]),
        (lambda d: d.update(request_timestamp=np.ones((3, 1), I64)),
         ["request_timestamp", "batch B = 3", "hist_item_ids's 2"]),
        (lambda d: d.update(request_scenario=np.ones((2, 2), I64)), ["request_scenario", "(2, 2)", "axis 1 is 2", "1"]),
        (lambda d: d.update(hist_scenarios=np.ones((2, 3, 5), I64)),
         ["hist_scenarios", "(2, 3, 5)", "block length Tb = 5", "(2, 3, 4)"]),
        (lambda d: d.update(request_timestamp=np.full((2, 1), -9, I64)), ["request_timestamp", "-9", "index (0, 0)"]),
        (lambda d: d["hist_timestamps"].__setitem__((0, 1, 3), -1), ["hist_timestamps", "-1", "index (0, 1, 3)"]),
        (lambda d: d["hist_timestamps"].__setitem__((1, 0, 0), NOW * 1000), ["hist_timestamps", "milliseconds"]),
        (lambda d: d["hist_behaviors"].__setitem__((0, 2, 1), 7), ["hist_behaviors", "7", "index (0, 2, 1)", "0=play"]),
        (lambda d: d.update(request_scenario=np.full((2, 1), 4, I64)), ["request_scenario", "4", "3=playlist"]),
    ],
)  # fmt: skip
def test_call_input_errors(change: Any, parts: list[str]) -> None:
    d = call_inputs()
    change(d)
    raises(parts, validate_inputs, d, SPEC)


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"batch": SPEC.max_batch_size + 1}, ["hist_item_ids", "batch B = 9", "max_batch_size=8", "score_batch"]),
        ({"nb": SPEC.n_blocks + 1}, ["hist_item_ids", "axis 1 is 4", "n_blocks=3", "'play'"]),
        ({"tb": SPEC.max_block_len + 1}, ["hist_item_ids", "Tb = 13", "max_block_len=12"]),
        ({"tb": 0}, ["hist_item_ids", "Tb = 0"]),
        ({"n": SPEC.max_candidates + 1}, ["cand_item_ids", "N = 513", "max_candidates=512", "chunks"]),
        ({"n": 0}, ["cand_item_ids", "N = 0"]),
    ],
)
def test_call_limits_name_value_and_limit(kwargs: dict[str, int], parts: list[str]) -> None:
    raises(parts, validate_inputs, call_inputs(**kwargs), SPEC)


def test_batch_at_the_limits_is_valid() -> None:
    validate_inputs(call_inputs(batch=SPEC.max_batch_size, tb=SPEC.max_block_len, n=SPEC.max_candidates), SPEC)


def test_padding_slots_are_not_held_to_plausibility() -> None:
    """Padding slots (item id 0) carry behaviour/scenario/timestamp 0 or anything: only real events are checked."""
    d = call_inputs()
    d["hist_item_ids"][0, 1, 3] = 0
    d["hist_behaviors"][0, 1, 3] = 99
    d["hist_timestamps"][0, 1, 3] = -1
    validate_inputs(d, SPEC)
    validate_inputs(call_inputs(), SPEC, Allow())
    d["hist_item_ids"][0, 1, 3] = 5  # a real event now: both its odd values are refused
    raises(["hist_timestamps", "-1"], validate_inputs, d, SPEC)
    raises(["hist_behaviors", "99"], validate_inputs, d, SPEC, Allow(any_timestamp=True))
    validate_inputs(d, SPEC, Allow(unknown_ids=True, any_timestamp=True))


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


def fake_scores(inputs: Mapping[str, npt.NDArray[np.int64]], n_tasks: int) -> F32:
    """Scores ``[B, N, n_tasks]`` from each row's own inputs only, as the M-FALCON mask guarantees."""
    cand = inputs[CANDIDATE_INPUT].astype(np.float64)  # [B, N]
    user = inputs["hist_item_ids"].sum(axis=(1, 2)).astype(np.float64)  # [B]
    scen = inputs["request_scenario"][:, 0].astype(np.float64)  # [B]
    task = np.arange(n_tasks, dtype=np.float64)
    s = (cand[:, :, None] % 997) / 997 + (user[:, None, None] % 13) / 130 + scen[:, None, None] / 40 + task / 10
    out: F32 = (s / 3).astype(np.float32)
    return out


def expected_scores(req: ScoreRequest, spec: ServingSpec) -> F32:
    blocks = build_blocks(req.history, spec)
    one = {
        "hist_item_ids": blocks.item_ids[None],
        "request_scenario": np.array([[req.scenario]], dtype=I64),
        CANDIDATE_INPUT: np.asarray(req.candidates, dtype=I64)[None],
    }
    row: F32 = fake_scores(one, spec.n_tasks)[0]
    return row


ENCODER_INPUTS = (*HISTORY_INPUTS, "request_scenario")


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


# ---- serving spec from the served config ---------------------------------------------


def triton_config_json(spec: ServingSpec, **override: Any) -> dict[str, Any]:
    """What ``get_model_config(..., as_json=True)`` returns (proto field names, string parameters)."""
    cfg: dict[str, Any] = {
        "name": "astro",
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": [
            {"name": n, "data_type": "TYPE_INT64"}
            for n in (*HISTORY_INPUTS, "request_scenario", "request_timestamp", CANDIDATE_INPUT)
        ],
        "parameters": {k: {"string_value": v} for k, v in spec.to_parameters().items()},
    }
    cfg.update(override)
    return {"config": cfg}


def test_spec_round_trips_through_the_config_json() -> None:
    assert spec_from_model_config(triton_config_json(SPEC)) == SPEC
    assert spec_from_model_config(triton_config_json(SPEC)["config"]) == SPEC


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"parameters": {}}, "publishes no usable serving spec.*max_batch_size"),
        ({"max_batch_size": 4}, "max_batch_size=4 but parameters say max_batch_size=8"),
        ({"input": [{"name": "hist_item_ids"}]}, "lacks contract inputs"),
    ],
)
def test_bad_served_config_is_a_server_error(override: dict[str, Any], match: str) -> None:
    with pytest.raises(ServerError, match=match):
        spec_from_model_config(triton_config_json(SPEC, **override))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"max_block_len": "4"}, "keeps 12 events but max_block_len=4"),  # the play block keeps 12 > 4
        ({"behaviors": "play,like,skip"}, r"block 'like' keeps behaviours \['share'\] outside behaviors"),
        ({"scenarios": "home,home"}, r"scenarios=\['home', 'home'\] repeats a name"),  # the config's rule
        ({"max_candidates": "0"}, "max_candidates: Input should be greater than or equal to 1"),  # its field type
        ({"task_names": "like,"}, "task_names.1: String should have at least 1 character"),
    ],
)
def test_inconsistent_served_specs_are_refused(change: dict[str, str], match: str) -> None:
    """The served spec holds the config's own rules (and field types), so a server publishing a spec no config
    could have is refused, naming the field and the value."""
    params = {k: {"string_value": v} for k, v in {**SPEC.to_parameters(), **change}.items()}
    with pytest.raises(ServerError, match=match):
        spec_from_model_config(triton_config_json(SPEC, parameters=params))
    (field, value), *_ = change.items()
    with pytest.raises(ValueError, match=field):  # built directly: pydantic's error, naming the field
        ServingSpec(**{**SPEC.__dict__, field: tuple(value.split(",")) if "," in value else int(value)})


# ---- client options: gRPC's service config and the header plugin ----------------------------------


def test_retry_policy_backoff_doubles_and_caps() -> None:
    p = RetryPolicy(retries=5, backoff_s=0.1, backoff_max_s=0.3)
    assert [p.delay(k) for k in range(1, 5)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert p.grpc_attempts == 5 and RetryPolicy(retries=1000).grpc_attempts == 5 and RetryPolicy(0).grpc_attempts == 1
    with pytest.raises(ValueError, match="retries=-1"):
        RetryPolicy(retries=-1)


def service_config(**kwargs: Any) -> dict[str, Any]:
    args = dict(channel_args(RetryPolicy(**kwargs)))
    assert args["grpc.enable_retries"] == 1 and args["grpc.lb_policy_name"] == "round_robin"
    config: dict[str, Any] = json.loads(str(args["grpc.service_config"]))
    return config


def test_service_config_waits_retries_unavailable_and_balances() -> None:
    config = service_config(retries=2, backoff_s=0.1, backoff_max_s=0.4)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    waiting, probes = config["methodConfig"]
    assert [n["method"] for n in waiting["name"]] == list(WAITING_METHODS)
    assert "ModelInfer" in WAITING_METHODS and "ModelConfig" in WAITING_METHODS
    assert waiting["waitForReady"] is True
    assert waiting["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.100s",
        "maxBackoff": "0.400s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],  # a replica gone, or a refusal
    }
    assert [n["method"] for n in probes["name"]] == list(PROBE_METHODS)
    assert probes["waitForReady"] is False and "retryPolicy" not in probes  # health: one fail-fast attempt
    no_retries = service_config(retries=0, wait_for_ready=False)["methodConfig"][0]
    assert no_retries["waitForReady"] is False and "retryPolicy" not in no_retries  # gRPC wants maxAttempts >= 2
    # one replica's channel under the affinity router: fail fast, the router fails over to the key's next replica
    replica = json.loads(str(dict(channel_args(RetryPolicy(retries=2), replica=True))["grpc.service_config"]))
    assert replica["methodConfig"][0]["waitForReady"] is False and "retryPolicy" not in replica["methodConfig"][0]


def test_client_options_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        AstroClient(timeout_s=0)
    with pytest.raises(ValueError, match=r"\['root_certificates'\] given but ssl=False"):
        AstroClient(root_certificates="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="root_certificates: no such file"):
        AstroClient(ssl=True, root_certificates="/nonexistent/ca.pem")
    with AstroClient(headers={"X-Api-Key": "k"}) as c:
        assert c.headers == {"x-api-key": "k"}  # gRPC metadata keys must be lowercase
        plugin = c._triton.plugin()  # headers go through tritonclient's plugin, not each call
        assert isinstance(plugin, HeaderPlugin) and plugin.headers == {"x-api-key": "k"}
    with AstroClient() as c:  # no headers: the plugin still sends a traceparent with every call (test_tracing.py)
        plugin = c._triton.plugin()
        assert isinstance(plugin, HeaderPlugin) and plugin.headers == {}


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),  # one address: any gRPC target, as it is
        ("dns:///triton-headless:8001", "dns:///triton-headless:8001"),
        ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("localhost:1,127.0.0.1:2,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),  # names resolved, duplicates once
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_several_addresses_become_one_round_robin_target(url: str, target: str) -> None:
    assert grpc_target(url)[0] == target
    assert grpc_target(url)[1] == tuple(p.strip() for p in url.split(","))


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("127.0.0.1:1,,127.0.0.1:2", "empty address"),
        ("127.0.0.1:1,127.0.0.1", "must be host:port"),
        ("127.0.0.1:1,127.0.0.1:99999", "must be host:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bad_address_lists_are_refused(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AstroClient(url)


# ---- the mutation pin: what is retried, and by whom -------------------------------------------------


def exception(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


LOADING_MSG = "Request for unknown model: 'astro' has no available versions"
BY_HAND: list[tuple[str, str, bool]] = [
    ("NOT_FOUND", LOADING_MSG, True),  # the one thing gRPC cannot know: a model still (re)loading
    ("NOT_FOUND", "Request for unknown model: 'nope' is not found", False),
    ("UNAVAILABLE", "failed to connect", False),  # gRPC's retry policy did that already
    ("UNAVAILABLE", LOADING_MSG, False),
    ("INVALID_ARGUMENT", LOADING_MSG, False),
    ("INTERNAL", LOADING_MSG, False),
    ("UNKNOWN", LOADING_MSG, False),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", False),
    ("RESOURCE_EXHAUSTED", "queue full", False),
    ("CANCELLED", "cancelled", False),
]


@pytest.mark.parametrize(("status", "message", "retried"), BY_HAND)
def test_only_a_loading_model_is_retried_by_hand(status: str, message: str, retried: bool) -> None:
    assert is_model_loading(exception(status, message)) is retried
    assert RETRYABLE_STATUS_CODES == ("UNAVAILABLE", "RESOURCE_EXHAUSTED")  # what gRPC retries on its own


# ---- over gRPC to a stub of Triton's protocol ---------------------------------------------


class StubTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # untyped base
    # method names are gRPC's (CamelCase)
    """Answers Triton's gRPC protocol for an ``astro`` serving ``spec``; scores = :func:`fake_scores`.

    ``fail[method]`` is a list of (status, message) that the next calls of ``method`` abort with;
    ``calls`` records (method, metadata) of every ModelConfig/ModelInfer/ServerLive call; ``events``
    records ("in" | "out", candidate ids) as each ModelInfer arrives and as it is answered,
    ``delay_s`` after its arrival (after :meth:`hold_together`'s wait, if any)."""

    def __init__(self, spec: ServingSpec) -> None:
        self.spec = spec
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.batch_shapes: list[tuple[int, ...]] = []
        self.inputs: list[dict[str, npt.NDArray[np.int64]]] = []
        self.fail: dict[str, list[tuple[Any, str]]] = {}
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.deadlines: list[tuple[int | None, float | None]] = []  # per ModelInfer: Triton timeout us, gRPC s left
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.together: threading.Barrier | None = None
        self.held = 0  # how many of the next ModelInfer calls wait at ``together``

    def hold_together(self, n: int, timeout_s: float = 10.0) -> None:
        """The next ``n`` ModelInfer calls each wait until all ``n`` have arrived, so calls a client sends
        together are in flight together however slowly its threads start; after ``timeout_s`` they go on,
        so a client that sends fewer at once shows a lower peak instead of hanging (give its calls a longer
        timeout_s than this)."""
        with self.lock:
            self.together, self.held = threading.Barrier(n, timeout=timeout_s), n

    def _seen(self, method: str, context: Any) -> None:
        with self.lock:
            self.calls.append((method, {k: v for k, v in context.invocation_metadata()}))
            failures = self.fail.get(method)
            failure = failures.pop(0) if failures else None
        if failure is not None:
            context.abort(*failure)

    @property
    def metadata(self) -> list[dict[str, str]]:
        return [m for _, m in self.calls]

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    def ServerLive(self, request: Any, context: Any) -> Any:
        self._seen("ServerLive", context)
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=request.name == "astro")

    def ModelConfig(self, request: Any, context: Any) -> Any:
        self._seen("ModelConfig", context)
        if request.name != "astro":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        cfg = model_config_pb2.ModelConfig(name="astro", platform="ensemble", max_batch_size=self.spec.max_batch_size)
        for k, v in self.spec.to_parameters().items():
            cfg.parameters[k].string_value = v
        return service_pb2.ModelConfigResponse(config=cfg)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        self._seen("ModelInfer", context)
        timeout = request.parameters["timeout"].int64_param if "timeout" in request.parameters else None
        with self.lock:
            self.deadlines.append((timeout, context.time_remaining()))
        arrays = {
            t.name: np.frombuffer(raw, dtype=I64).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        try:  # the same limits Triton enforces from the ensemble config
            arrays = validate_inputs(arrays, self.spec, Allow(unknown_ids=True, any_timestamp=True))
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"[request id: <id_unknown>] {e}")
        key = tuple(arrays[CANDIDATE_INPUT].ravel().tolist())
        with self.lock:
            self.batch_shapes.append(tuple(arrays[CANDIDATE_INPUT].shape))
            self.inputs.append(arrays)
            self.events.append(("in", key))
            together = self.together if self.held > 0 else None
            self.held = max(0, self.held - 1)
        if together is not None:
            with contextlib.suppress(threading.BrokenBarrierError):  # timed out: fewer came; the peak shows it
                together.wait()
        time.sleep(self.delay_s)
        scores = fake_scores(arrays, self.spec.n_tasks)
        with self.lock:
            self.events.append(("out", key))
        resp = service_pb2.ModelInferResponse(model_name="astro")
        out = resp.outputs.add()
        out.name, out.datatype = "scores", "FP32"
        out.shape.extend(scores.shape)
        resp.raw_output_contents.append(scores.tobytes())
        return resp


SMALL = ServingSpec(
    max_batch_size=3,
    max_candidates=8,
    max_block_len=12,
    task_names=("play", "like"),
    blocks=SPEC.blocks,
    behaviors=SPEC.behaviors,
    scenarios=SPEC.scenarios,
    preset="stub",
)


def start_stub(spec: ServingSpec, port: int = 0) -> tuple[grpc.Server, StubTriton, int]:
    stub = StubTriton(spec)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(stub, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, stub, bound


@pytest.fixture
def stub_server() -> Iterator[tuple[StubTriton, str]]:
    server, stub, port = start_stub(SMALL)
    yield stub, f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: every connection is refused, with no race."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield int(s.getsockname()[1])
    s.close()


UNAVAILABLE_ABORT = (grpc.StatusCode.UNAVAILABLE, "server busy")
STATUS_CASES: list[tuple[str, Any, str, bool]] = [
    # (case, status the stub aborts the first call with, its message, whether the call is tried again)
    ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, "server busy", True),
    ("loading", grpc.StatusCode.NOT_FOUND, LOADING_MSG, True),
    ("unknown model", grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'astro' is not found", False),
    ("INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT, "bad input " + LOADING_MSG, False),
    ("INTERNAL", grpc.StatusCode.INTERNAL, "onnxruntime failed", False),
    ("UNKNOWN", grpc.StatusCode.UNKNOWN, "stub crashed", False),
    ("RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", True),  # a refusal: tried again
    ("ABORTED", grpc.StatusCode.ABORTED, "aborted", False),
]


@pytest.mark.parametrize(("case", "status", "message", "retried"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
@pytest.mark.parametrize("method", ["ModelConfig", "ModelInfer"])
def test_each_status_is_retried_or_final(
    stub_server: tuple[StubTriton, str], method: str, case: str, status: Any, message: str, retried: bool
) -> None:
    """The pin on what is retried: a change that retries anything else, or stops retrying either of
    the two, fails here (the stub counts the attempts it sees)."""
    stub, url = stub_server
    with AstroClient(url, retries=2, backoff_s=0.01, timeout_s=5) as c:
        if method == "ModelInfer":
            c.get_spec()
        stub.fail[method] = [(status, message)]
        if retried:
            assert c.score(history(), [1, 2], 0, NOW).shape == (2, SMALL.n_tasks)
        else:
            with pytest.raises(ServerError) as info:
                c.score(history(), [1, 2], 0, NOW)
            assert not isinstance(info.value, ServerUnavailableError)
            assert info.value.attempts == 1 and info.value.status == str(status)
            assert info.value.server_message is not None and message in info.value.server_message
    assert stub.count(method) == (2 if retried else 1), case
    if status == grpc.StatusCode.UNAVAILABLE:  # retried by gRPC's policy, not by hand: gRPC marks the retry
        assert [m.get("grpc-previous-rpc-attempts") for name, m in stub.calls if name == method] == [None, "1"]


def test_unavailable_is_retried_up_to_the_policy_then_raised(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    stub.fail["ModelConfig"] = [UNAVAILABLE_ABORT] * 10
    with AstroClient(url, retries=3, backoff_s=0.01, timeout_s=5) as c, pytest.raises(ServerUnavailableError) as info:
        c.get_spec()
    assert stub.count("ModelConfig") == 4 and "server busy" in str(info.value)  # 1 + retries, no more


def test_loading_is_retried_within_retries_and_deadline(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    stub.fail["ModelConfig"] = [(grpc.StatusCode.NOT_FOUND, LOADING_MSG)] * 10
    with AstroClient(url, retries=2, backoff_s=0.01, timeout_s=5) as c, pytest.raises(ServerError) as info:
        c.get_spec()
    assert stub.count("ModelConfig") == 3 and info.value.attempts == 3 and "after 3 attempts" in str(info.value)
    assert "has no available versions" in str(info.value)


def test_score_batch_over_grpc_chunks_batches_and_sends_headers(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    counts = [20, 1, 9, 3, 8]  # max_candidates=8: 20 -> 3 chunks, 9 -> 2, the others 1: 8 calls of B=1
    reqs = [request(n, seed=i, n_hist=4 * i) for i, n in enumerate(counts)]
    with AstroClient(url, headers={"X-Tenant": "qa"}) as c:
        out = c.score_batch(reqs)
        single = c.score(reqs[0].history, reqs[0].candidates, reqs[0].scenario, reqs[0].timestamp)
        health = c.health()
    assert health["ready"] is True and health["served"] == json.loads(SMALL.to_json())
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(validate_request(req), SMALL))
        assert got.dtype == np.float32
    np.testing.assert_array_equal(single, out[0])
    assert len(stub.batch_shapes) == 8 + 3  # score_batch: 8 calls; score: 3 calls, one per chunk
    assert all(b == 1 and n <= SMALL.max_candidates for b, n in stub.batch_shapes)
    assert stub.metadata and all(m.get("x-tenant") == "qa" for m in stub.metadata)


def chunk_order(stub: StubTriton, reqs: list[ScoreRequest]) -> None:
    """Each request's first chunk was answered before any other chunk of it arrived, and all chunks of a
    request carried byte-identical encoder inputs."""
    where: dict[tuple[int, ...], tuple[int, int]] = {}  # candidate ids -> (request, start)
    for i, r in enumerate(reqs):
        for start, stop in split_evenly(len(r.candidates), SMALL.max_candidates):
            where[tuple(np.asarray(r.candidates)[start:stop].tolist())] = (i, start)
    seen = {where[key] for _, key in stub.events}
    assert seen == set(where.values()), "every chunk is one call"
    for i in range(len(reqs)):
        first_out = stub.events.index(("out", next(k for k, v in where.items() if v == (i, 0))))
        later_in = [
            n for n, (what, key) in enumerate(stub.events) if what == "in" and where[key][0] == i and where[key][1]
        ]
        assert all(n > first_out for n in later_in), f"request {i}: a chunk was sent before the first came back"
    by_request: dict[int, set[bytes]] = {}
    for inputs in stub.inputs:
        i = where[tuple(inputs[CANDIDATE_INPUT].ravel().tolist())][0]
        by_request.setdefault(i, set()).add(b"".join(inputs[n].tobytes() for n in ENCODER_INPUTS))
    assert all(len(v) == 1 for v in by_request.values())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_first_chunk_is_answered_before_the_rest_are_sent(stub_server: tuple[StubTriton, str], mode: str) -> None:
    """Triton caches the encoder's response only once computed: chunks sent beside the first would all miss."""
    stub, url = stub_server
    stub.hold_together(4)  # the first wave: the four first chunks, in flight at once
    reqs = [request(n, seed=i, n_hist=5 + i) for i, n in enumerate([30, 2, 17, 9])]  # 4 + 1 + 3 + 2 chunks of <= 8

    async def go() -> list[F32]:
        async with AsyncAstroClient(url, max_in_flight=8, timeout_s=30) as c:
            return await c.score_batch(reqs)

    if mode == "sync":
        with AstroClient(url, max_in_flight=8, timeout_s=30) as c:
            out = c.score_batch(reqs)
    else:
        out = asyncio.run(go())
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(validate_request(req), SMALL))
    chunk_order(stub, reqs)
    assert peak_in_flight(stub) == 4  # the calls of a wave overlap (max_in_flight=8; the stub serves 4 at once)


def peak_in_flight(stub: StubTriton) -> int:
    depth = peak = 0
    for what, _ in stub.events:
        depth += 1 if what == "in" else -1
        peak = max(peak, depth)
    return peak


def test_sync_client_sends_max_in_flight_calls_at_once(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    stub.hold_together(3)  # the first three wait for each other: all three in flight
    stub.delay_s = 0.1  # and each call lasts, so a fourth sent beside them would overlap them
    with AstroClient(url, max_in_flight=3, timeout_s=30) as c:  # outlasts the stub's hold
        c.score_batch([request(3, seed=i) for i in range(6)])
    assert peak_in_flight(stub) == 3  # 6 calls, 3 at a time (the stub serves up to 4 at once)


def test_a_failed_call_of_a_threaded_batch_is_raised(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    with AstroClient(url, max_in_flight=4) as c:
        c.get_spec()
        stub.fail["ModelInfer"] = [(grpc.StatusCode.INTERNAL, "onnxruntime failed")]
        with pytest.raises(ServerError, match=r"INTERNAL.*onnxruntime failed") as info:
            c.score_batch([request(3, seed=i) for i in range(6)])
        assert info.value.attempts == 1
        assert c.score(history(), [1, 2], 0, NOW).shape == (2, SMALL.n_tasks)  # the client is still usable


def test_async_score_batch_over_grpc_matches_sync(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    reqs = [request(n, seed=i) for i, n in enumerate([17, 2, 30, 5])]

    async def go() -> tuple[list[F32], dict[str, Any]]:
        async with AsyncAstroClient(url, max_in_flight=2, headers={"X-Tenant": "aio"}) as c:
            return await c.score_batch(reqs), await c.health()

    out, health = asyncio.run(go())
    assert health["ready"] and health["served"]["preset"] == "stub"
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(validate_request(req), SMALL))
    assert all(m.get("x-tenant") == "aio" for m in stub.metadata)


def test_async_client_retries_like_the_sync_one(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    stub.fail["ModelConfig"] = [(grpc.StatusCode.NOT_FOUND, LOADING_MSG)]
    stub.fail["ModelInfer"] = [UNAVAILABLE_ABORT]

    async def go() -> ServerError:
        async with AsyncAstroClient(url, backoff_s=0.01) as c:
            first = await c.score(history(), [1, 2], 0, NOW)  # loading, then UNAVAILABLE: both ridden out
            assert first.shape == (2, SMALL.n_tasks)
            stub.fail["ModelInfer"] = [(grpc.StatusCode.INTERNAL, "boom")]
            try:
                await c.score(history(), [1, 2], 0, NOW)
            except ServerError as e:
                return e
        raise AssertionError("INTERNAL was not raised")

    err = asyncio.run(go())
    assert err.status == "StatusCode.INTERNAL" and "boom" in str(err)
    assert stub.count("ModelConfig") == 2 and stub.count("ModelInfer") == 3


def test_infer_arrays_keeps_the_server_message(stub_server: tuple[StubTriton, str]) -> None:
    _, url = stub_server
    too_many = call_inputs(batch=1, n=SMALL.max_candidates + 5)
    with AstroClient(url, retries=3) as c:
        with pytest.raises(ServerError) as info:
            c.infer_arrays(too_many)  # raw: the client does not check, the server refuses
        with pytest.raises(RequestError, match=r"N = 13.*max_candidates=8"):
            c.infer_arrays(too_many, validate=True)  # checked against the served spec, never sent
        ok = c.infer_arrays(call_inputs(batch=2, n=4))
    err = info.value
    assert not isinstance(err, ServerUnavailableError) and err.attempts == 1  # INVALID_ARGUMENT is not retried
    assert err.status == "StatusCode.INVALID_ARGUMENT"
    assert err.server_message is not None and "N = 13" in err.server_message and "max_candidates=8" in str(err)
    assert ok.shape == (2, 4, SMALL.n_tasks) and ok.dtype == np.float32


def test_unknown_model_is_a_server_error_with_its_message(stub_server: tuple[StubTriton, str]) -> None:
    _, url = stub_server
    with AstroClient(url, model="nope") as c:
        with pytest.raises(ServerError, match=r"NOT_FOUND.*unknown model: 'nope'"):
            c.get_spec()
        health = c.health()
    assert health["model_ready"] is False and health["ready"] is False and health["served"] is None


def test_served_vocabulary_is_checked_before_sending(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    with AstroClient(url) as c:
        with pytest.raises(RequestError, match=r"^scenario: value 7 is outside the served scenario ids \[0, 4\)"):
            c.score(history(), [1], 7, NOW)
        with pytest.raises(RequestError, match=r"^requests\[1\]\.history\.behaviors: value 9"):
            c.score_batch([request(), ScoreRequest(with_history(H, behaviors=np.array([0, 9, 1, 1])), [1], 0, NOW)])
    assert stub.batch_shapes == []  # nothing was sent
    with AstroClient(url, allow=Allow(unknown_ids=True)) as c:
        assert c.score(history(), [1], 7, NOW).shape == (1, SMALL.n_tasks)


def test_blocks_follow_the_servers_vocabulary() -> None:
    """A server whose model was trained with a reordered behaviour vocabulary: id 0 is "like" there.
    The client learns the vocabulary from the served spec and blocks events by it."""
    reordered = ServingSpec(**{**SMALL.__dict__, "behaviors": ("like", "play", "skip", "share")})
    server, stub, port = start_stub(reordered)
    h = EventHistory.from_lists([10, 11, 12, 13], [0, 1, 2, 3], [0, 0, 0, 0], [NOW - 4, NOW - 3, NOW - 2, NOW - 1])
    try:
        with AstroClient(f"127.0.0.1:{port}") as c:
            assert c.get_spec().behaviors == ("like", "play", "skip", "share")
            c.score(h, [1], 0, NOW)
    finally:
        server.stop(grace=None)
    items = stub.inputs[0]["hist_item_ids"][0]  # [Nb, Tb]: blocks play {play}, like {like, share}, recent (all)
    names = [b.name for b in reordered.blocks]
    assert items[names.index("play")].tolist()[:2] == [11, 0]  # behaviour 1 = "play" on this server
    assert items[names.index("like")].tolist()[:2] == [13, 10]  # 3 = "share", 0 = "like", newest first
    default = build_blocks(h, SMALL).item_ids
    assert default[names.index("play")].tolist()[:2] == [10, 0]  # by the default vocabulary it would differ


# ---- waiting for a server: gRPC's waitForReady ----------------------------------------------


def test_waits_for_a_server_until_the_deadline_then_says_unavailable(closed_port: int) -> None:
    url = f"127.0.0.1:{closed_port}"
    with AstroClient(url, timeout_s=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.score(history(), [1, 2], 0, NOW)
        elapsed = time.monotonic() - t0
    err = info.value
    assert 1.0 <= elapsed < 1.0 + PROBE_TIMEOUT_S + 1.0
    assert err.status == "StatusCode.UNAVAILABLE" and err.attempts == 1
    assert url in str(err) and "get_model_config" in str(err) and "within its deadline (timeout_s=1 s" in str(err)
    assert err.server_message and "onnect" in err.server_message  # gRPC's "Failed to connect ... Connection refused"


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_without_waiting_unavailable_fails_fast(closed_port: int, retries: int) -> None:
    timeout_s = 10.0
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=timeout_s, retries=retries, wait_for_ready=False) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.get_spec()
        elapsed = time.monotonic() - t0
    assert elapsed < timeout_s / 2, f"{elapsed:.1f} s: waited for a server (until timeout_s={timeout_s:g})"
    assert info.value.status == "StatusCode.UNAVAILABLE"
    assert info.value.server_message and "onnect" in info.value.server_message


def test_async_waits_then_says_unavailable(closed_port: int) -> None:
    async def go() -> tuple[ServerUnavailableError, float, dict[str, Any]]:
        async with AsyncAstroClient(f"127.0.0.1:{closed_port}", timeout_s=1.0) as c:
            t0 = time.monotonic()
            try:
                await c.score_batch([request(), request(seed=1)])
            except ServerUnavailableError as e:
                return e, time.monotonic() - t0, await c.health()
        raise AssertionError("no error against a closed port")

    err, elapsed, health = asyncio.run(go())
    assert 1.0 <= elapsed < 1.0 + PROBE_TIMEOUT_S + 1.0 and "within its deadline (timeout_s=1 s" in str(err)
    assert health["ready"] is False and health["server_live"] is False and "UNAVAILABLE" in health["error"]


def test_health_against_a_closed_port_says_not_ready_at_once(closed_port: int) -> None:
    timeout_s = 10.0
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=timeout_s) as c:
        t0 = time.monotonic()
        h = c.health()
        assert c.is_ready() is False
        elapsed = time.monotonic() - t0
    # probes do not wait for a server: waiting would take timeout_s per probe
    assert elapsed < timeout_s / 2, f"{elapsed:.1f} s: a probe waited for a server (timeout_s={timeout_s:g})"
    assert h["ready"] is False and h["server_live"] is False and "UNAVAILABLE" in h["error"] and h["served"] is None


def test_request_errors_raise_before_any_network_call(closed_port: int) -> None:
    timeout_s = 10.0
    with AstroClient(f"127.0.0.1:{closed_port}", retries=0, timeout_s=timeout_s) as c:
        t0 = time.monotonic()
        raises(["candidates", "empty"], c.score, history(), [], 0, 0)
        raises(["timestamp", "milliseconds"], c.score, history(), [1], 0, NOW * 1000)
        elapsed = time.monotonic() - t0
    # a call to the closed port would wait for a server until timeout_s (and then say UNAVAILABLE)
    assert elapsed < timeout_s / 2, f"{elapsed:.1f} s: the client waited for a server (timeout_s={timeout_s:g})"


def reconnect_backoff_ms(args: list[tuple[str, str | int]]) -> tuple[Any, ...]:
    options = dict(args)
    return tuple(options.get(f"grpc.{k}_reconnect_backoff_ms") for k in ("initial", "min", "max"))


def test_the_channel_re_dials_within_the_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a refused connection gRPC waits its reconnect backoff before dialling again (1 s, growing to 120 s,
    by default); the clients' channels take it from their RetryPolicy."""
    assert reconnect_backoff_ms(channel_args(RetryPolicy(backoff_s=0.05, backoff_max_s=0.2))) == (50, 50, 200)
    assert reconnect_backoff_ms(channel_args(RetryPolicy(backoff_s=0.001, backoff_max_s=0.002))) == (10, 10, 10)
    opened: list[list[tuple[str, str | int]]] = []
    real = grpc.insecure_channel

    def insecure_channel(url: str, options: list[tuple[str, str | int]]) -> Any:
        opened.append(options)
        return real(url, options)

    monkeypatch.setattr(grpc, "insecure_channel", insecure_channel)
    with AstroClient("127.0.0.1:1", backoff_s=0.3, backoff_max_s=2.0):
        pass
    assert [reconnect_backoff_ms(o) for o in opened] == [(300, 300, 2000)]  # what tritonclient's channel got
    aio = AsyncAstroClient("127.0.0.1:1", backoff_s=0.3, backoff_max_s=2.0)
    assert reconnect_backoff_ms(aio._triton_kwargs["channel_args"]) == (300, 300, 2000)


LATE_S = 3.25  # gRPC's default backoff dials near 1, 2.6 and 5.2 s (+-20%): never between 3.12 and 4.13 s


def test_a_server_that_comes_up_late_is_waited_for() -> None:
    """The client re-dials within backoff_max_s of the server's start; with gRPC's default reconnect backoff it
    would reach a server that came up at ``LATE_S`` only at its next dial, 0.85 s or more later."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    servers: list[grpc.Server] = []
    up: list[float] = []

    def come_up() -> None:
        time.sleep(LATE_S)
        s.close()
        servers.append(start_stub(SMALL, port)[0])
        up.append(time.monotonic())

    with AstroClient(f"127.0.0.1:{port}", timeout_s=30.0, backoff_s=0.02, backoff_max_s=0.05) as c:
        late = threading.Thread(target=come_up)
        late.start()
        try:
            assert c.get_spec() == SMALL  # the default client waits: no retries are spent
            answered = time.monotonic()
        finally:
            late.join()
            for server in servers:
                server.stop(grace=None)
    waited = answered - up[0]  # < 0: answered while start() was returning
    assert waited < 0.7, f"answered {waited:.2f} s after the server came up: not re-dialled within backoff_max_s"


# ---- several addresses: gRPC's round_robin ---------------------------------------------------


def test_several_addresses_share_the_load_and_a_stopped_one_costs_nothing() -> None:
    (server_a, stub_a, port_a), (server_b, stub_b, port_b) = start_stub(SMALL), start_stub(SMALL)
    try:
        with AstroClient(f"127.0.0.1:{port_a},127.0.0.1:{port_b}") as c:
            first = [c.score(history(seed=i), [1, 2, 3], 0, NOW) for i in range(20)]
            assert len(stub_a.batch_shapes) >= 5 and len(stub_b.batch_shapes) >= 5  # both served
            server_b.stop(grace=None)
            served_b = len(stub_b.batch_shapes)
            after = [c.score(history(seed=i), [1, 2, 3], 0, NOW) for i in range(20)]
        assert len(stub_b.batch_shapes) == served_b and len(stub_a.batch_shapes) >= 25  # all went to a
        for a, b in zip(first, after, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        server_a.stop(grace=None)
        server_b.stop(grace=None)


# ---- CLI -------------------------------------------------------------------------------


def test_cli_parses_headers() -> None:
    assert parse_header("X-Api-Key=a=b") == ("x-api-key", "a=b")
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_header("novalue")


def test_cli_score_prints_scores_keyed_by_task(
    stub_server: tuple[StubTriton, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub, url = stub_server
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(cli_request())))
    assert main(["score", "--url", url, "--header", "X-Tenant=cli"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["candidates"] == [11, 12, 13] and set(out["scores"]) == {"play", "like"}
    want = expected_scores(request_from_json(cli_request()), SMALL)
    assert out["scores"]["like"] == pytest.approx(want[:, 1].tolist())
    assert stub.metadata[-1].get("x-tenant") == "cli"


def test_cli_score_list_and_errors(
    stub_server: tuple[StubTriton, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = stub_server
    f = tmp_path / "reqs.json"
    f.write_text(json.dumps([cli_request(), cli_request(candidates=[5])]))
    assert main(["score", str(f), "--url", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["candidates"] for o in out] == [[11, 12, 13], [5]]

    for bad, message in [
        (cli_request(candidates=[1, 2.5]), "candidates: element 1 is 2.5 (float)"),
        ([cli_request(), {**cli_request(), "candidate": [1]}], "requests[1]: unknown field 'candidate'"),
        (without(cli_request(), "history"), "lacks keys ['history'] (a new user"),
    ]:
        f.write_text(json.dumps(bad))
        assert main(["score", str(f), "--url", url]) == 2
        assert message in capsys.readouterr().err
    f.write_text("{not json")
    assert main(["score", str(f), "--url", url]) == 2
    assert "input: is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "flag", "message"),
    [
        ({"scenario": 9}, "--allow-unknown-ids", "scenario: value 9 is outside the served scenario ids"),
        ({"timestamp": NOW * 1000}, "--allow-any-timestamp", "timestamp: value 1700000000000"),
        ({"history": {"item_ids": [0], "behaviors": [0], "scenarios": [0], "timestamps": [NOW]}},
         "--allow-padding-items", "history.item_ids: value 0 at index 0 is the padding item id"),
    ],
)  # fmt: skip
def test_cli_allow_flags(
    stub_server: tuple[StubTriton, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: dict[str, Any],
    flag: str,
    message: str,
) -> None:
    _, url = stub_server
    f = tmp_path / "req.json"
    f.write_text(json.dumps(cli_request(**override)))
    assert main(["score", str(f), "--url", url]) == 2
    err = capsys.readouterr().err
    assert message in err and flag in err
    assert main(["score", str(f), "--url", url, flag]) == 0


def test_cli_health(stub_server: tuple[StubTriton, str], closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    _, url = stub_server
    assert main(["health", "--url", url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is True and report["model"] == "astro"
    served = report["served"]  # which preset, limits and vocabularies are served
    assert served["preset"] == "stub" and served["behaviors"] == list(SMALL.behaviors)
    assert served["scenarios"] == list(SMALL.scenarios) and served["max_candidates"] == SMALL.max_candidates
    assert main(["health", "--url", f"127.0.0.1:{closed_port}", "--timeout", "2"]) == 1
    assert json.loads(capsys.readouterr().out)["server_live"] is False
    assert main(["health", "--url", url, "--model", "nope"]) == 1
    capsys.readouterr()
    assert main(["health", "--url", f"{url},127.0.0.1:{closed_port}"]) == 1  # one report per address
    both = json.loads(capsys.readouterr().out)
    assert both["ready"] is False and [r["ready"] for r in both["replicas"]] == [True, False]
    assert both["replicas"][0]["url"] == url


def test_cli_help_covers_every_flag() -> None:
    from client.__main__ import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "score" in a.choices)
    for name, sub in subparsers.choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


def test_every_call_carries_its_route_key_and_what_is_left_of_the_deadline(stub_server: tuple[StubTriton, str]) -> None:
    """Each chunk's call carries the header x-astro-route-key (a hash of its encoder inputs, the same for every
    chunk; the caller's user id when given) and the score's remaining deadline twice: as Triton's per-request
    timeout and as the gRPC deadline. Without them a mesh could not hash on the key, and a server could not drop
    a request whose caller has gone."""
    stub, url = stub_server
    h = history()
    with AstroClient(url, timeout_s=30) as c:
        c.get_spec()
        c.score(h, list(range(1, 20)), 0, NOW, deadline_s=20.0)  # 19 candidates, max_candidates 8: three calls
        c.score(h, [1, 2], 0, NOW, user_id="u-7")
    keys = [m[ROUTE_KEY_HEADER] for method, m in stub.calls if method == "ModelInfer"]
    assert len(keys) == 4 and keys[:3] == [route_key(stub.inputs[0])] * 3 and keys[3] == user_route_key("u-7")
    for timeout_us, left_s in stub.deadlines[:3]:
        assert timeout_us is not None and left_s is not None and 0 < timeout_us <= 20_000_000 and left_s <= 20.0
        assert abs(timeout_us / 1e6 - left_s) < 0.5, (timeout_us, left_s)  # both: the score's remaining deadline
    assert stub.deadlines[3][0] is not None and 20e6 < stub.deadlines[3][0] <= 30e6  # the default, timeout_s


def test_affinity_waits_for_a_replica_to_come_up_within_the_deadline() -> None:
    """Both replicas down at first (connections refused): the affinity client keeps trying the key's replicas
    with backoff until one comes up, as the balanced channel's waitForReady does, within the deadline."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    servers: list[grpc.Server] = []

    def come_up() -> None:
        time.sleep(1.0)
        socks[1].close()
        servers.append(start_stub(SMALL, ports[1])[0])

    late = threading.Thread(target=come_up)
    with AstroClient(",".join(f"127.0.0.1:{p}" for p in ports), timeout_s=20, backoff_s=0.02, backoff_max_s=0.1) as c:
        assert c.lb == "affinity"
        late.start()
        try:
            assert c.get_spec() == SMALL
        finally:
            late.join()
            socks[0].close()
            for server in servers:
                server.stop(grace=None)
