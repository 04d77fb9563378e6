"""The affinity router's pure logic (client/routing.py) and what a failure means (client/errors.py).

Rendezvous hashing: every key has one first choice while the replica set is unchanged; a replica
leaving moves only its own keys (about 1/R), a replica joining takes about 1/R and moves nothing
else; the load bound spills a key to its next choice; a replica found gone sits out a cool-down.
No server here: the tests with real replicas are in test_client_replicas.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from client import (
    ROUTE_KEY_HEADER,
    EventHistory,
    RequestError,
    Router,
    ScoreRequest,
    ServerOverloadedError,
    ServerUnavailableError,
    build_call_inputs,
    call_key,
    plan_calls,
    request_from_json,
    route_key,
    user_route_key,
    validate_request,
)
from client.errors import failure_kind, server_error
from client.routing import EJECT_BASE_S, choose, load_cap, ranking
from contract.config import AstroConfig
from contract.serving_spec import ServingSpec

SPEC = ServingSpec.from_config(AstroConfig.from_name("tiny"))
NOW = 1_700_000_000
REPLICAS = tuple(f"10.0.0.{i}:8001" for i in range(1, 5))
KEYS = [f"{i:016x}" for i in range(4000)]


def first_choices(replicas: tuple[str, ...]) -> dict[str, str]:
    return {k: ranking(k, replicas)[0] for k in KEYS}


def test_keys_spread_evenly_and_keep_their_replica() -> None:
    top = first_choices(REPLICAS)
    assert top == first_choices(REPLICAS) == first_choices(tuple(reversed(REPLICAS)))  # order of the set is moot
    shares = [sum(r == t for t in top.values()) / len(KEYS) for r in REPLICAS]
    assert all(0.2 < s < 0.3 for s in shares), shares  # 1/R = 0.25 each


def test_removing_a_replica_moves_only_its_keys() -> None:
    before = first_choices(REPLICAS)
    gone = REPLICAS[1]
    after = first_choices(tuple(r for r in REPLICAS if r != gone))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)  # nothing else moved
    assert sorted(moved) == sorted(k for k in KEYS if before[k] == gone)  # and every key of it did
    assert 0.2 < len(moved) / len(KEYS) < 0.3  # about 1/R
    assert all(after[k] == ranking(k, REPLICAS)[1] for k in moved)  # each to its own second choice


def test_adding_a_replica_takes_about_one_in_r_and_moves_nothing_else() -> None:
    before = first_choices(REPLICAS)
    new = "10.0.0.9:8001"
    after = first_choices((*REPLICAS, new))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == new for k in moved)
    assert 0.15 < len(moved) / len(KEYS) < 0.25  # 1/5


def test_the_load_bound_spills_to_the_keys_next_choice() -> None:
    key = KEYS[0]
    ranked = ranking(key, REPLICAS)
    first, second = ranked[0], ranked[1]
    # mean 1 in flight: cap = ceil(1.25 * (4 + 1) / 4) = 2
    assert load_cap(4, 4, 1.25) == 2
    assert choose(ranked, {first: 1, second: 1, ranked[2]: 1, ranked[3]: 1}, 1.25) == first
    assert choose(ranked, {first: 2, second: 1, ranked[2]: 1}, 1.25) == second  # first holds the cap: spill
    assert choose(ranked, {first: 3, second: 3, ranked[2]: 0}, 1.25) == ranked[2]
    with pytest.raises(ValueError, match=r"load_factor=0\.9"):
        Router(REPLICAS, load_factor=0.9)


@pytest.mark.parametrize("c", [1.0, 1.25, 2.0])
def test_some_replica_is_always_under_the_bound(c: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        replicas = REPLICAS[:n] if n <= 4 else (*REPLICAS, "10.0.0.5:1")
        loads = {r: int(rng.integers(0, 20)) for r in replicas}
        ranked = ranking(KEYS[int(rng.integers(len(KEYS)))], replicas)
        chosen = choose(ranked, loads, c)
        assert loads[chosen] < load_cap(sum(loads.values()), n, c)
        assert all(loads[r] >= load_cap(sum(loads.values()), n, c) for r in ranked[: ranked.index(chosen)])


def test_router_counts_calls_in_flight_and_spills_a_hot_key() -> None:
    router = Router(REPLICAS[:2])
    key = KEYS[7]
    first, second = ranking(key, REPLICAS[:2])
    placed = [router.acquire(key) for _ in range(4)]
    # cap = ceil(1.25 * (t + 1) / 2): the 1st and 2nd go to the first choice, the 3rd spills, the 4th returns
    assert placed == [first, first, second, first], placed
    assert router.in_flight() == {first: 3, second: 1}
    for r in placed:
        router.release(r, ok=True)
    assert router.in_flight() == {}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def place(router: Router, key: str, tried: tuple[str, ...] = ()) -> str:
    """Where ``key``'s next call goes (released at once, leaving the load and the ejections as they were)."""
    replica = router.acquire(key, tried)
    router.release(replica, ok=False)
    return replica


def test_a_replica_found_gone_sits_out_a_growing_cool_down() -> None:
    clock = Clock()
    router = Router(REPLICAS[:3], clock=clock)
    key = KEYS[3]
    first, second, _ = ranking(key, REPLICAS[:3])
    router.release(router.acquire(key), ok=False, gone=True)
    assert place(router, key) == second  # ejected
    clock.now += EJECT_BASE_S + 0.01
    assert place(router, key) == first  # back after the cool-down
    router.release(router.acquire(key), ok=False, gone=True)  # fails again: twice as long
    clock.now += EJECT_BASE_S + 0.01
    assert place(router, key) == second
    clock.now += EJECT_BASE_S
    assert place(router, key) == first
    router.release(router.acquire(key), ok=True)  # answered: the count starts over
    router.release(router.acquire(key), ok=False, gone=True)
    clock.now += EJECT_BASE_S + 0.01
    assert place(router, key) == first
    # a refusal ejects nothing; a retry never goes to a replica it tried while another is left
    router.release(router.acquire(key), ok=False, gone=False)
    assert place(router, key) == first
    assert place(router, key, tried=(first,)) == second
    assert place(router, key, tried=REPLICAS[:3]) == first  # all tried: start over
    assert router.in_flight() == {}


def members(router: Router) -> tuple[str, ...]:
    return router.replicas


def test_the_replica_set_is_re_resolved_and_a_failed_resolution_keeps_it() -> None:
    clock = Clock()
    answers: list[object] = [("10.0.0.1:1", "10.0.0.2:1"), OSError("dns down"), ("10.0.0.2:1", "10.0.0.3:1")]

    def resolve() -> tuple[str, ...]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]  # tuples above

    router = Router(("10.0.0.1:1",), resolve=resolve, refresh_s=5, clock=clock)
    held = router.acquire("k")
    assert members(router) == ("10.0.0.1:1",)
    clock.now += 5
    assert members(router) == ("10.0.0.1:1", "10.0.0.2:1")  # scaled out
    clock.now += 5
    assert members(router) == ("10.0.0.1:1", "10.0.0.2:1")  # DNS failed: keep what we know
    clock.now += 5
    assert members(router) == ("10.0.0.2:1", "10.0.0.3:1")  # 10.0.0.1 went away
    assert router.retired() == []  # a call is still in flight on it
    router.release(held, ok=True)
    assert router.retired() == ["10.0.0.1:1"] and router.retired() == []


def history(seed: int, n: int = 9) -> EventHistory:
    rng = np.random.default_rng(seed)
    return EventHistory(
        rng.integers(1, 10**9, n), rng.integers(0, 4, n), rng.integers(0, 4, n), NOW - np.arange(n, 0, -1) * 60
    )


def keys_of(requests: list[ScoreRequest]) -> list[str]:
    requests = [validate_request(r) for r in requests]
    calls = plan_calls([len(r.candidates) for r in requests], 4)
    inputs = build_call_inputs(calls, requests, SPEC)
    return [call_key(requests[c.request], a) for c, a in zip(calls, inputs, strict=True)]


def test_the_key_is_the_encoder_inputs_or_the_user_id() -> None:
    h = history(1)
    same_user = [ScoreRequest(h, [1, 2, 3, 4, 5, 6, 7], 2, NOW), ScoreRequest(h, [9], 2, NOW + 3600)]
    keys = keys_of(same_user)
    assert len(keys) == 3 and len(set(keys)) == 1  # every chunk and page: candidates and request time do not enter
    assert keys_of([ScoreRequest(h, [1], 1, NOW)]) != keys[:1]  # another scenario: another cache entry
    assert keys_of([ScoreRequest(history(2), [1], 2, NOW)]) != keys[:1]
    fields = (h.item_ids, h.behaviors, h.scenarios, h.timestamps)
    grown = EventHistory(*(np.append(a, v) for a, v in zip(fields, (5, 0, 0, NOW), strict=True)))
    assert keys_of([ScoreRequest(grown, [1], 2, NOW)]) != keys[:1]
    by_id = keys_of([ScoreRequest(h, [1], 1, NOW, "u-1"), ScoreRequest(history(3), [1], 2, NOW, "u-1")])
    assert by_id == [user_route_key("u-1")] * 2 and user_route_key("u-1") != user_route_key("u-2")
    assert route_key({}) != route_key({"hist_item_ids": np.zeros((1, 3, 1), np.int64)})
    assert ROUTE_KEY_HEADER == "x-astro-route-key"


def test_user_id_in_json_is_optional_and_checked() -> None:
    base: dict[str, object] = {"history": {"item_ids": [], "behaviors": [], "scenarios": [], "timestamps": []}}
    base["candidates"] = [1]
    base |= {"scenario": 0, "timestamp": NOW}
    assert request_from_json(base).user_id is None  # the public format, unchanged
    assert request_from_json({**base, "user_id": "u-42"}).user_id == "u-42"
    for bad, match in [(42, "must be a string"), ("", "1 to 256"), ("x" * 257, "1 to 256"), ("a\nb", "printable")]:
        with pytest.raises(RequestError, match=f"user_id: .*{match}"):
            request_from_json({**base, "user_id": bad})
    with pytest.raises(RequestError, match=r"requests\[0\]\.user_id"):
        validate_request(ScoreRequest(EventHistory.empty(), [1], 0, NOW, 7), "requests[0]")  # type: ignore[arg-type]


def exception(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("UNAVAILABLE", "in ensemble 'astro', Exceeds maximum queue size", "refused"),
        ("UNAVAILABLE", "Request timeout expired", "refused"),
        ("RESOURCE_EXHAUSTED", "upstream overflow", "refused"),
        ("UNAVAILABLE", "failed to connect to all addresses", "down"),
        ("NOT_FOUND", "Request for unknown model: 'astro' has no available versions", "loading"),
        ("INVALID_ARGUMENT", "Exceeds maximum queue size", None),
        ("INTERNAL", "onnxruntime failed", None),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", None),
    ],
)
def test_what_another_try_may_cure(status: str, message: str, kind: str | None) -> None:
    assert failure_kind(exception(status, message)) == kind


def test_giving_up_on_refusals_says_overloaded_which_limit_and_what_to_do() -> None:
    err = server_error(exception("UNAVAILABLE", "in ensemble 'astro', Exceeds maximum queue size"), "infer", "u", 3)
    assert isinstance(err, ServerOverloadedError) and err.attempts == 3 and err.status == "StatusCode.UNAVAILABLE"
    text = str(err)
    assert "overloaded" in text and "max_queue_size" in text and "Exceeds maximum queue size" in text
    assert "retry later with backoff" in text and "add replicas" in text
    assert "max_queue_size" in err.limit
    gone = server_error(exception("UNAVAILABLE", "failed to connect"), "infer", "u", 1)
    assert type(gone) is ServerUnavailableError
