"""The client over real gRPC to ``StubTriton`` (tests/triton_stub.py): which statuses are retried, chunked
calls and their order, calls in flight, the asyncio client, error messages, route keys and deadlines.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs installed; the tests only start a server
import numpy as np
import pytest
from client_samples import (
    ENCODER_INPUTS,
    F32,
    NOW,
    call_inputs,
    expected_scores,
    history,
    request,
)
from triton_stub import LOADING_MSG, SMALL, StubTriton

from client import (
    AstroClient,
    AsyncAstroClient,
    RequestError,
    ScoreRequest,
    ServerError,
    ServerUnavailableError,
    split_evenly,
    validate_request,
)
from client.routing import route_key, user_route_key
from contract.admission import QUEUED_STEPS
from contract.routing import ROUTE_KEY_HEADER
from contract.tensors import CANDIDATE_INPUT

# ---- over gRPC to a stub of Triton's protocol ---------------------------------------------


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


def test_every_call_carries_its_route_key_and_what_is_left_of_the_deadline(stub_server: tuple[StubTriton, str]) -> None:
    """Each chunk's call carries the header x-astro-route-key (a hash of its encoder inputs, the same for every
    chunk; the caller's user id when given) and the score's remaining deadline: as the gRPC deadline, and split
    over the ensemble's two queues (each times it afresh) as Triton's per-request timeout. Without them a mesh
    could not hash on the key, and a server could not drop a request whose caller has gone."""
    stub, url = stub_server
    h = history()
    with AstroClient(url, timeout_s=30) as c:
        c.get_spec()
        c.score(h, list(range(1, 20)), 0, NOW, deadline_s=20.0)  # 19 candidates, max_candidates 8: three calls
        c.score(h, [1, 2], 0, NOW, user_id="u-7")
    keys = [m[ROUTE_KEY_HEADER] for method, m in stub.calls if method == "ModelInfer"]
    assert len(keys) == 4 and keys[:3] == [route_key(stub.inputs[0])] * 3 and keys[3] == user_route_key("u-7")
    for timeout_us, left_s in stub.deadlines[:3]:
        # gRPC core's grpc-timeout encoding "may round up" (timeout_encoding.h): the server may see a little more
        assert timeout_us is not None and left_s is not None and 0 < timeout_us <= 10_000_000 and left_s <= 20.5
        # the gRPC deadline is what is left of the score's; Triton's timeout its share per queue of the ensemble
        assert abs(timeout_us / 1e6 * QUEUED_STEPS - left_s) < 0.5, (timeout_us, left_s)
    assert stub.deadlines[3][0] is not None and 10e6 < stub.deadlines[3][0] <= 15e6  # the default, timeout_s
