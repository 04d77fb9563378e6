"""The gRPC client without a Triton server: validation, call planning, padding, retries, CLI.

Where the wire matters (retries that reconnect, headers, error mapping, chunked calls)
the client talks over real gRPC to ``StubTriton``, a few-line in-process servicer of
Triton's own protocol (``tritonclient.grpc.service_pb2_grpc``). Its scores are a known
function of each row's inputs, not the model: it checks the client's plumbing only.
Tests against the real server live elsewhere.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import socket
import subprocess
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

from client import (
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
    plan_calls,
    spec_from_model_config,
    split_evenly,
    validate_inputs,
    validate_request,
)
from client.__main__ import main, parse_header, request_from_json
from contract.blocks import build_blocks
from contract.config import AstroConfig
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, HISTORY_INPUTS

REPO = Path(__file__).resolve().parents[1]
SPEC = ServingSpec.from_config(AstroConfig.from_name("tiny"))  # max_batch_size=8, max_candidates=512, Tb<=12
I64 = np.int64
F32 = npt.NDArray[np.float32]


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
    return ScoreRequest(history(n_hist, seed), rng.integers(1, 1_000_000, n_cand, dtype=I64), seed % 4, 1_700_000_000)


def call_inputs(batch: int = 2, nb: int = SPEC.n_blocks, tb: int = 4, n: int = 3) -> dict[str, Any]:
    return {
        **{name: np.ones((batch, nb, tb), dtype=I64) for name in HISTORY_INPUTS},
        "request_scenario": np.zeros((batch, 1), dtype=I64),
        "request_timestamp": np.full((batch, 1), 1_700_000_000, dtype=I64),
        CANDIDATE_INPUT: np.ones((batch, n), dtype=I64),
    }


def raises(match_all: list[str], fn: Any, *args: Any, **kwargs: Any) -> RequestError:
    """``fn`` raises RequestError whose message holds every string of ``match_all``."""
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    for part in match_all:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"
    return info.value


# ---- one request ---------------------------------------------------------------------


def test_valid_request_is_normalised_to_int64() -> None:
    raw = ScoreRequest(
        EventHistory([5, 6], [0, 1], [2, 3], [10, 20]),  # type: ignore[arg-type]  # lists, as a caller may pass
        [7, 8, 9],
        np.int32(2),  # type: ignore[arg-type]
        1_700_000_000,
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
    ("field", "bad", "dtype"),
    [
        ("item_ids", np.array([1.0, 2.0, 3.0]), "float64"),
        ("behaviors", np.array([True, False, True]), "bool"),
        ("scenarios", np.array([1, "x", 2], dtype=object), "object"),
        ("timestamps", np.array([1.5, 2.5, 3.5], dtype=np.float32), "float32"),
    ],
)
def test_history_fields_must_be_ints_not_cast(field: str, bad: Any, dtype: str) -> None:
    h = history(3)
    fields = {f: getattr(h, f) for f in ("item_ids", "behaviors", "scenarios", "timestamps")}
    fields[field] = bad
    raises([f"history.{field}", f"dtype {dtype}"], validate_request, ScoreRequest(EventHistory(**fields), [1], 0, 0))


def test_negative_item_ids_are_legal() -> None:
    """Item ids are signed int64 hashed inside the graph: negative ones are valid ids, not errors."""
    h = history(5)
    items = h.item_ids.copy()
    items[3] = -42
    items[4] = -(2**63)
    odd = EventHistory(items, h.behaviors, h.scenarios, h.timestamps)
    out = validate_request(ScoreRequest(odd, [-7, 2**63 - 1], 0, 0))
    assert out.history.item_ids[3] == -42 and list(out.candidates) == [-7, 2**63 - 1]


def test_negative_history_timestamp_is_refused() -> None:
    h = history(3)
    ts = h.timestamps.copy()
    ts[1] = -5
    bad = EventHistory(h.item_ids, h.behaviors, h.scenarios, ts)
    raises(["history.timestamps", "-5", "index 1"], validate_request, ScoreRequest(bad, [1], 0, 0))


def test_out_of_range_behaviours_and_scenarios_are_legal() -> None:
    # DESIGN/config: ids outside the known ranges map to a learned "unknown" slot in the graph
    h = history(3)
    odd = EventHistory(h.item_ids, np.array([99, -1, 7]), np.array([-3, 50, 0]), h.timestamps)
    validate_request(ScoreRequest(odd, [1], 12345, 0))


@pytest.mark.parametrize(
    ("candidates", "parts"),
    [
        ([], ["candidates", "must not be empty", "(0,)"]),
        (np.zeros(0, I64), ["candidates", "must not be empty"]),
        ([[1, 2], [3, 4]], ["candidates", "1-D", "(2, 2)"]),
        ([1, 2.5], ["candidates", "dtype float64"]),
        ([True, False], ["candidates", "dtype bool"]),
        (["a", "b"], ["candidates", "dtype <U1"]),
        (np.array([1, 2**63], dtype=np.uint64), ["candidates", str(2**63), "index 1", "int64 maximum"]),
        ([1, 2**70], ["candidates", "dtype object"]),
        ([[1], [2, 3]], ["candidates"]),  # ragged
    ],
)
def test_candidate_errors_name_field_value_and_limit(candidates: Any, parts: list[str]) -> None:
    raises(parts, validate_request, ScoreRequest(history(), candidates, 0, 0))


@pytest.mark.parametrize(
    ("scenario", "timestamp", "parts"),
    [
        (1.0, 0, ["scenario", "must be an int", "1.0", "float"]),
        (True, 0, ["scenario", "True", "bool"]),
        ("home", 0, ["scenario", "'home'", "str"]),
        (None, 0, ["scenario", "None"]),
        (2**63, 0, ["scenario", str(2**63), "int64 maximum"]),
        (0, -1, ["timestamp", "-1", "minimum 0"]),
        (0, 1.7e9, ["timestamp", "1700000000.0", "float"]),
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
    err = raises(["requests[1].candidates", "empty"], AstroClient._prepare, batch)
    assert err.field == "requests[1].candidates"


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
        (lambda d: d.update(request_timestamp=np.ones((3, 1), I64)), ["request_timestamp", "batch size 3", "2"]),
        (lambda d: d.update(request_scenario=np.ones((2, 2), I64)), ["request_scenario", "(2, 2)", "[B, 1]"]),
        (lambda d: d.update(hist_scenarios=np.ones((2, 3, 5), I64)), ["hist_scenarios", "(2, 3, 5)", "(2, 3, 4)"]),
        (lambda d: d.update(request_timestamp=np.full((2, 1), -9, I64)), ["request_timestamp", "-9", "index (0, 0)"]),
        (lambda d: d["hist_timestamps"].__setitem__((0, 1, 3), -1), ["hist_timestamps", "-1", "index (0, 1, 3)"]),
    ],
)
def test_call_input_errors(change: Any, parts: list[str]) -> None:
    d = call_inputs()
    change(d)
    raises(parts, validate_inputs, d, SPEC)


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"batch": SPEC.max_batch_size + 1}, ["cand_item_ids", "batch size 9", "max_batch_size=8"]),
        ({"nb": SPEC.n_blocks + 1}, ["hist_item_ids", "Nb=4", "3", "'play'"]),
        ({"tb": SPEC.max_block_len + 1}, ["hist_item_ids", "Tb=13", "max_block_len=12"]),
        ({"tb": 0}, ["hist_item_ids", "Tb=0"]),
        ({"n": SPEC.max_candidates + 1}, ["cand_item_ids", "N=513", "max_candidates=512"]),
        ({"n": 0}, ["cand_item_ids", "N=0"]),
    ],
)
def test_call_limits_name_value_and_limit(kwargs: dict[str, int], parts: list[str]) -> None:
    raises(parts, validate_inputs, call_inputs(**kwargs), SPEC)


def test_batch_at_the_limits_is_valid() -> None:
    validate_inputs(call_inputs(batch=SPEC.max_batch_size, tb=SPEC.max_block_len, n=SPEC.max_candidates), SPEC)


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


@pytest.mark.parametrize("max_batch", [1, 2, 3, 8])
@pytest.mark.parametrize("max_cand", [1, 4, 512])
@pytest.mark.parametrize("counts", [[1], [3], [600], [5, 1, 1200, 7, 7, 513, 2, 30, 1, 1, 9]])
def test_plan_calls_covers_every_candidate_once_within_limits(counts: list[int], max_batch: int, max_cand: int) -> None:
    calls = plan_calls(counts, max_batch, max_cand)
    seen: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(counts))}
    for call in calls:
        assert 1 <= len(call) <= max_batch
        for row in call:
            assert 1 <= row.size <= max_cand
            seen[row.request].append((row.start, row.stop))
    for i, n in enumerate(counts):
        spans = sorted(seen[i])
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # as few calls as the batch limit allows
    assert len(calls) == -(-sum(-(-n // max_cand) for n in counts) // max_batch)


def test_plan_calls_groups_rows_of_similar_length() -> None:
    calls = plan_calls([2, 500, 3, 490], max_batch_size=2, max_candidates=512)
    assert [[(r.request, r.size) for r in call] for call in calls] == [[(1, 500), (3, 490)], [(0, 2), (2, 3)]]


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
    blocks = build_blocks(req.history, spec.blocks)
    one = {
        "hist_item_ids": blocks.item_ids[None],
        "request_scenario": np.array([[req.scenario]], dtype=I64),
        CANDIDATE_INPUT: np.asarray(req.candidates, dtype=I64)[None],
    }
    row: F32 = fake_scores(one, spec.n_tasks)[0]
    return row


@pytest.mark.parametrize(
    ("counts", "max_batch", "max_cand"), [([1], 8, 512), ([3, 40, 1, 17], 2, 8), ([1300, 2, 513], 8, 512)]
)
def test_padding_is_dropped_and_scores_reassemble_in_order(counts: list[int], max_batch: int, max_cand: int) -> None:
    spec = ServingSpec(max_batch, max_cand, SPEC.max_block_len, ("a", "b", "c"), SPEC.blocks)
    reqs = [validate_request(request(n, seed=i, n_hist=3 * i)) for i, n in enumerate(counts)]
    calls = plan_calls(counts, max_batch, max_cand)
    results = []
    for rows in calls:
        inputs = validate_inputs(build_call_inputs(rows, reqs, spec), spec)
        cand = inputs[CANDIDATE_INPUT]
        assert cand.shape == (len(rows), max(r.size for r in rows))
        for i, r in enumerate(rows):  # a short row repeats its own last id, nothing else
            own = np.asarray(reqs[r.request].candidates)[r.start : r.stop]
            assert cand[i, : r.size].tolist() == own.tolist()
            assert (cand[i, r.size :] == own[-1]).all()
            assert inputs["request_scenario"][i, 0] == reqs[r.request].scenario
        results.append(fake_scores(inputs, spec.n_tasks))
    out = assemble_scores(calls, results, counts, spec.n_tasks)
    assert [o.shape for o in out] == [(n, 3) for n in counts]
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(req, spec))


def test_one_user_split_over_rows_shares_its_blocks() -> None:
    reqs = [validate_request(request(10, seed=3, n_hist=20))]
    rows = [ChunkRow(0, 0, 5), ChunkRow(0, 5, 10)]
    inputs = build_call_inputs(rows, reqs, SPEC)
    for name in HISTORY_INPUTS:
        np.testing.assert_array_equal(inputs[name][0], inputs[name][1])
    assert inputs["hist_item_ids"].shape[2] <= SPEC.max_block_len


def test_assemble_refuses_a_plan_that_misses_candidates() -> None:
    with pytest.raises(AssertionError, match="covered"):
        assemble_scores([[ChunkRow(0, 0, 2)]], [np.zeros((1, 2, 1), np.float32)], [3], 1)


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


def test_spec_with_blocks_beyond_max_block_len_is_refused() -> None:
    bad = ServingSpec(8, 512, 4, ("a",), SPEC.blocks)  # the play block keeps 12 > 4
    with pytest.raises(ServerError, match="keeps 12 events but max_block_len=4"):
        spec_from_model_config(triton_config_json(bad))


# ---- client options ------------------------------------------------------------------


def test_retry_policy_backoff_doubles_and_caps() -> None:
    p = RetryPolicy(retries=5, backoff_s=0.1, backoff_max_s=0.3)
    assert [p.delay(k) for k in range(1, 5)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    with pytest.raises(ValueError, match="retries=-1"):
        RetryPolicy(retries=-1)


def test_client_options_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        AstroClient(timeout_s=0)
    with pytest.raises(ValueError, match=r"\['root_certificates'\] given but ssl=False"):
        AstroClient(root_certificates="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="root_certificates: no such file"):
        AstroClient(ssl=True, root_certificates="/nonexistent/ca.pem")
    with AstroClient(headers={"X-Api-Key": "k"}) as c:
        assert c.headers == {"x-api-key": "k"}  # gRPC metadata keys must be lowercase


# ---- retries against a closed port (no server at all) ---------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: every connection is refused (UNAVAILABLE), with no race."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield int(s.getsockname()[1])
    s.close()


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_sync_retries_unavailable_then_gives_up(closed_port: int, retries: int) -> None:
    backoff = 0.05
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=5.0, retries=retries, backoff_s=backoff) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.score(history(), [1, 2], 0, 1_700_000_000)
        elapsed = time.monotonic() - t0
    err = info.value
    assert err.attempts == retries + 1
    assert err.status == "StatusCode.UNAVAILABLE"
    assert f"127.0.0.1:{closed_port}" in str(err) and "get_model_config" in str(err)
    assert err.server_message and "connect" in err.server_message
    slept = sum(RetryPolicy(retries, backoff).delay(k) for k in range(1, retries + 1))
    assert slept * 0.9 <= elapsed < 5.0


def test_retries_stop_at_the_deadline(closed_port: int) -> None:
    # 10 retries at 0.2 s, 0.4 s, ... would take minutes; the 0.5 s deadline stops them after 0.2 s
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=0.5, retries=10, backoff_s=0.2, backoff_max_s=10) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.get_spec()
        elapsed = time.monotonic() - t0
    assert info.value.attempts == 2  # a third try would start after 0.2 + 0.4 s > 0.5 s
    assert elapsed < 0.5


def test_async_retries_unavailable_then_gives_up(closed_port: int) -> None:
    async def go() -> tuple[ServerUnavailableError, float, dict[str, Any]]:
        async with AsyncAstroClient(f"127.0.0.1:{closed_port}", timeout_s=5.0, retries=2, backoff_s=0.05) as c:
            t0 = time.monotonic()
            try:
                await c.score_batch([request(), request(seed=1)])
            except ServerUnavailableError as e:
                return e, time.monotonic() - t0, await c.health()
        raise AssertionError("no error against a closed port")

    err, elapsed, health = asyncio.run(go())
    assert err.attempts == 3 and (0.05 + 0.1) * 0.9 <= elapsed < 5.0
    assert health["ready"] is False and health["server_live"] is False and "UNAVAILABLE" in health["error"]


def test_health_against_a_closed_port_says_not_ready(closed_port: int) -> None:
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=2.0) as c:
        h = c.health()
        assert c.is_ready() is False
    assert h["ready"] is False and h["server_live"] is False and "UNAVAILABLE" in h["error"]


def test_request_errors_raise_before_any_network_call(closed_port: int) -> None:
    with AstroClient(f"127.0.0.1:{closed_port}", retries=0) as c:
        raises(["candidates", "empty"], c.score, history(), [], 0, 0)


# ---- over gRPC to a stub of Triton's protocol ---------------------------------------------


class StubTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # untyped base
    # method names are gRPC's (CamelCase)
    """Answers Triton's gRPC protocol for an ``astro`` serving ``spec``; scores = :func:`fake_scores`."""

    def __init__(self, spec: ServingSpec) -> None:
        self.spec = spec
        self.metadata: list[dict[str, str]] = []
        self.batch_shapes: list[tuple[int, ...]] = []

    def _seen(self, context: Any) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    def ServerLive(self, request: Any, context: Any) -> Any:
        self._seen(context)
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=request.name == "astro")

    def ModelConfig(self, request: Any, context: Any) -> Any:
        self._seen(context)
        if request.name != "astro":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        cfg = model_config_pb2.ModelConfig(name="astro", platform="ensemble", max_batch_size=self.spec.max_batch_size)
        for k, v in self.spec.to_parameters().items():
            cfg.parameters[k].string_value = v
        return service_pb2.ModelConfigResponse(config=cfg)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        self._seen(context)
        arrays = {
            t.name: np.frombuffer(raw, dtype=I64).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        try:  # the same limits Triton enforces from the ensemble config
            arrays = validate_inputs(arrays, self.spec)
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"[request id: <id_unknown>] {e}")
        self.batch_shapes.append(tuple(arrays[CANDIDATE_INPUT].shape))
        scores = fake_scores(arrays, self.spec.n_tasks)
        resp = service_pb2.ModelInferResponse(model_name="astro")
        out = resp.outputs.add()
        out.name, out.datatype = "scores", "FP32"
        out.shape.extend(scores.shape)
        resp.raw_output_contents.append(scores.tobytes())
        return resp


SMALL = ServingSpec(
    max_batch_size=3, max_candidates=8, max_block_len=12, task_names=("play", "like"), blocks=SPEC.blocks
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


def test_score_batch_over_grpc_chunks_batches_and_sends_headers(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    counts = [20, 1, 9, 3, 8]  # 20 -> 3 rows of <= 8; 9 -> 2 rows; 8 rows at max_batch_size=3 -> 3 calls
    reqs = [request(n, seed=i, n_hist=4 * i) for i, n in enumerate(counts)]
    with AstroClient(url, headers={"X-Tenant": "qa"}) as c:
        out = c.score_batch(reqs)
        single = c.score(reqs[0].history, reqs[0].candidates, reqs[0].scenario, reqs[0].timestamp)
        assert c.health()["ready"] is True
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(validate_request(req), SMALL))
        assert got.dtype == np.float32
    np.testing.assert_array_equal(single, out[0])
    assert len(stub.batch_shapes) == 3 + 1  # score_batch: 3 calls; score: one call of 3 rows
    assert all(b <= SMALL.max_batch_size and n <= SMALL.max_candidates for b, n in stub.batch_shapes)
    assert stub.metadata and all(m.get("x-tenant") == "qa" for m in stub.metadata)


def test_async_score_batch_over_grpc_matches_sync(stub_server: tuple[StubTriton, str]) -> None:
    _, url = stub_server
    reqs = [request(n, seed=i) for i, n in enumerate([17, 2, 30, 5])]

    async def go() -> tuple[list[F32], bool]:
        async with AsyncAstroClient(url, max_in_flight=2) as c:
            return await c.score_batch(reqs), await c.is_ready()

    out, ready = asyncio.run(go())
    assert ready
    for req, got in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(got, expected_scores(validate_request(req), SMALL))


def test_infer_arrays_keeps_the_server_message(stub_server: tuple[StubTriton, str]) -> None:
    _, url = stub_server
    too_many = call_inputs(batch=1, n=SMALL.max_candidates + 5)
    with AstroClient(url, retries=3) as c:
        with pytest.raises(ServerError) as info:
            c.infer_arrays(too_many)  # raw: the client does not check, the server refuses
        with pytest.raises(RequestError, match=r"N=13.*max_candidates=8"):
            c.infer_arrays(too_many, validate=True)  # checked against the served spec, never sent
        ok = c.infer_arrays(call_inputs(batch=2, n=4))
    err = info.value
    assert not isinstance(err, ServerUnavailableError) and err.attempts == 1  # INVALID_ARGUMENT is not retried
    assert err.status == "StatusCode.INVALID_ARGUMENT"
    assert err.server_message is not None and "N=13" in err.server_message and "max_candidates=8" in str(err)
    assert ok.shape == (2, 4, SMALL.n_tasks) and ok.dtype == np.float32


def test_unknown_model_is_a_server_error_with_its_message(stub_server: tuple[StubTriton, str]) -> None:
    _, url = stub_server
    with AstroClient(url, model="nope") as c:
        with pytest.raises(ServerError, match=r"NOT_FOUND.*unknown model: 'nope'"):
            c.get_spec()
        assert c.health()["model_ready"] is False


def test_retry_reaches_a_server_that_comes_up_late() -> None:
    # gRPC waits its reconnect backoff (1 s by default) before dialling a refused address
    # again; the client matches it to backoff_s, or these retries would all fail at once.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    servers: list[grpc.Server] = []

    def come_up() -> None:
        time.sleep(0.05)
        s.close()
        servers.append(start_stub(SMALL, port)[0])

    with AstroClient(f"127.0.0.1:{port}", timeout_s=5.0, retries=2, backoff_s=0.2, backoff_max_s=0.4) as c:
        late = threading.Thread(target=come_up)
        late.start()
        try:
            assert c.get_spec() == SMALL  # attempts at ~0, 0.2, 0.6 s; the server is up from 0.05 s
        finally:
            late.join()
            for server in servers:
                server.stop(grace=None)


# ---- CLI -------------------------------------------------------------------------------


def cli_request(**override: Any) -> dict[str, Any]:
    h = history(4, seed=7)
    d: dict[str, Any] = {
        "history": {f: getattr(h, f).tolist() for f in ("item_ids", "behaviors", "scenarios", "timestamps")},
        "candidates": [11, 12, 13],
        "scenario": 1,
        "timestamp": 1_700_000_000,
    }
    d.update(override)
    return d


def test_cli_parses_headers() -> None:
    assert parse_header("X-Api-Key=a=b") == ("x-api-key", "a=b")
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_header("novalue")


@pytest.mark.parametrize(
    ("obj", "parts"),
    [
        ([], ["request", "JSON object"]),
        ({"candidates": [1]}, ["request", "lacks keys", "history", "scenario", "timestamp"]),
        (cli_request(history={"item_ids": []}), ["history", "lacks keys", "behaviors"]),
        (
            cli_request(history={"item_ids": [1.5], "behaviors": [0], "scenarios": [0], "timestamps": [1]}),
            ["history.item_ids", "float64"],
        ),
    ],
)
def test_cli_request_errors(obj: Any, parts: list[str]) -> None:
    raises(parts, request_from_json, obj)


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

    f.write_text(json.dumps(cli_request(candidates=[1, 2.5])))
    assert main(["score", str(f), "--url", url]) == 2
    assert "candidates" in capsys.readouterr().err
    f.write_text("{not json")
    assert main(["score", str(f), "--url", url]) == 2
    assert "input: is not valid JSON" in capsys.readouterr().err


def test_cli_health(stub_server: tuple[StubTriton, str], closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    _, url = stub_server
    assert main(["health", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["ready"] is True
    assert main(["health", "--url", f"127.0.0.1:{closed_port}", "--timeout", "2"]) == 1
    assert json.loads(capsys.readouterr().out)["server_live"] is False
    assert main(["health", "--url", url, "--model", "nope"]) == 1


def test_cli_help_covers_every_flag() -> None:
    from client.__main__ import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "score" in a.choices)
    for name, sub in subparsers.choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


# ---- packaging -------------------------------------------------------------------------


def test_client_imports_without_torch() -> None:
    code = (
        "import sys, client, client.__main__, client.astro_client, client.validation; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'model.astro'))); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
