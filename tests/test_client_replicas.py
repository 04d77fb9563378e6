"""The client against real Triton servers serving a model trained with a *reordered* behaviour
vocabulary: the client blocks events by the vocabulary the server publishes; and two replicas of
it on loopback, response cache on:

- affinity (the default over several addresses): while the set is unchanged every call of a user
  goes to one replica, so each user misses once and then hits (a client that spread calls
  round-robin would miss on both replicas: the hit-rate pin); one replica killed under load loses
  no request, and its users miss once on their new replica, then hit (Triton's statistics);
- round_robin: one replica killed under load with no failed request.

The model is the tiny preset with ``behaviors=("like", "play", "skip", "share")`` (id 0 is "like",
not "play" as in every preset), seeded and untrained: only the plumbing is under test, and its
scores depend on which block each event lands in.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc as grpcclient
from server_helpers import export_repository, start_together
from triton_stats import cache_counts, delta, poll

from client import AstroClient, AsyncAstroClient, EventHistory, ScoreRequest, build_call_inputs, call_key, plan_calls
from client.routing import ranking
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.serving_spec import ServingSpec
from contract.tensors import ENSEMBLE
from export.parity import torch_per_pair
from model.astro import AstroModel
from serve.response_cache import cache_sizing
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
REORDERED = ("like", "play", "skip", "share")
NOW = 1_700_000_000
SEED = 20251124


@pytest.fixture(scope="module")
def reordered_model() -> AstroModel:
    cfg = AstroConfig.from_name("tiny").replace(behaviors=REORDERED)
    torch.manual_seed(SEED)
    return AstroModel(cfg).eval()


@pytest.fixture(scope="module")
def reordered_repo(reordered_model: AstroModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reordered model exported as the ``python`` target, as ``python -m export`` would."""
    root = tmp_path_factory.mktemp("reordered")
    return export_repository(reordered_model, root)[1]


@pytest.fixture(scope="module")
def replicas(reordered_repo: Path) -> Iterator[list[TritonServer]]:
    """Two tritonservers serving the same repository on free loopback ports, started side by side, each with
    its own response cache (room for 64 users)."""
    size = cache_sizing(reordered_repo, 64).size
    servers = [TritonServer(reordered_repo, cache_size=size), TritonServer(reordered_repo, cache_size=size)]
    try:
        start_together(servers)
        yield servers
    finally:
        for s in servers:
            s.close()


def users(n: int, rng: np.random.Generator) -> list[ScoreRequest]:
    """Histories that use every behaviour id, so the blocks depend on the vocabulary."""
    out = []
    for _ in range(n):
        k = int(rng.integers(6, 24))
        history = EventHistory(
            rng.integers(1, 10**9, k),
            rng.integers(0, len(REORDERED), k),
            rng.integers(0, 4, k),
            NOW - np.sort(rng.integers(1, 10**6, k))[::-1],
        )
        out.append(ScoreRequest(history, rng.integers(1, 10**9, int(rng.integers(1, 40))), int(rng.integers(4)), NOW))
    return out


def per_pair(model: AstroModel, r: ScoreRequest, cfg: AstroConfig) -> npt.NDArray[np.float32]:
    """PyTorch's per-pair scores with the history blocked by ``cfg``'s vocabulary."""
    return torch_per_pair(model, RequestBatch.from_history(r.history, r.candidates, r.scenario, r.timestamp, cfg))[0]


def inference_count(server: TritonServer) -> int:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(ENSEMBLE, as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0].get("inference_count", 0))


def home(r: ScoreRequest, spec: ServingSpec, servers: list[TritonServer]) -> TritonServer:
    """The replica the key of ``r``'s calls ranks first (its encoder inputs: one key for all its calls)."""
    (inputs,) = build_call_inputs(
        plan_calls([1], 1), [ScoreRequest(r.history, r.candidates[:1], r.scenario, NOW)], spec
    )
    first = ranking(call_key(r, inputs), [s.grpc_url for s in servers])[0]
    return next(s for s in servers if s.grpc_url == first)


def pages(r: ScoreRequest, rng: np.random.Generator) -> ScoreRequest:
    """The user's next page: the same history and scenario, fresh candidates, a later time."""
    return ScoreRequest(r.history, rng.integers(1, 10**9, len(r.candidates)), r.scenario, r.timestamp + 60)


def test_client_blocks_events_by_the_served_vocabulary(
    replicas: list[TritonServer], reordered_model: AstroModel
) -> None:
    cfg = reordered_model.cfg
    default_vocab = cfg.replace(behaviors=AstroConfig.from_name("tiny").behaviors)
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    with AstroClient(replicas[0].grpc_url) as client:
        spec = client.get_spec()
        assert spec == ServingSpec.from_config(cfg) and spec.behaviors == REORDERED
        health = client.health()
        assert health["ready"] and health["served"]["behaviors"] == list(REORDERED)
        for r in users(4, rng):
            served = client.score(r.history, r.candidates, r.scenario, r.timestamp)
            np.testing.assert_allclose(served, per_pair(reordered_model, r, cfg), atol=1e-5, rtol=0)
            # the same events blocked by the presets' vocabulary (id 0 = "play") score differently
            wrong = per_pair(reordered_model, r, default_vocab)
            assert np.abs(served - wrong).max() > 1e-4


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_affinity_keeps_each_user_on_one_replica_so_it_misses_once(
    replicas: list[TritonServer], reordered_model: AstroModel, mode: str
) -> None:
    """Six users, three pages each, one call at a time over both replicas: every page of a user lands on
    the one replica its key ranks first (Triton's inference counts), so each user misses once and hits
    twice. Round-robin would send a user's second page to the other replica: a miss there (the pin)."""
    seed = SEED + (2 if mode == "sync" else 3)
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    reqs = users(6, rng)
    url = ",".join(s.grpc_url for s in replicas)
    spec = ServingSpec.from_config(reordered_model.cfg)
    served: list[tuple[ScoreRequest, npt.NDArray[np.float32]]] = []
    before_cache = [cache_counts(s) for s in replicas]

    def one_user(score: Callable[[ScoreRequest], npt.NDArray[np.float32]], r: ScoreRequest) -> None:
        counts = [inference_count(s) for s in replicas]
        for page in (r, pages(r, rng), pages(pages(r, rng), rng)):
            served.append((page, score(page)))
        poll(lambda: sum(inference_count(s) for s in replicas) - sum(counts) >= 3)  # statistics lag the answer
        grew = [inference_count(s) - c for s, c in zip(replicas, counts, strict=True)]
        assert sorted(grew) == [0, 3], f"one user's 3 pages spread over the replicas: {grew}"
        assert grew[replicas.index(home(r, spec, replicas))] == 3

    if mode == "sync":
        with AstroClient(url) as client:
            assert client.lb == "affinity"
            for r in reqs:
                one_user(lambda q: client.score(q.history, q.candidates, q.scenario, q.timestamp), r)
    else:

        async def go() -> None:
            async with AsyncAstroClient(url) as client:
                assert client.lb == "affinity"
                for r in reqs:
                    counts = [inference_count(s) for s in replicas]
                    for page in (r, pages(r, rng), pages(pages(r, rng), rng)):
                        served.append((page, await client.score(page.history, page.candidates, page.scenario, NOW)))
                    poll(lambda: sum(inference_count(s) for s in replicas) - sum(counts) >= 3)  # noqa: B023
                    grew = [inference_count(s) - c for s, c in zip(replicas, counts, strict=True)]
                    assert grew[replicas.index(home(r, spec, replicas))] == 3 and sum(grew) == 3, grew

        asyncio.run(go())
    hits_misses = [delta(cache_counts(s), b) for s, b in zip(replicas, before_cache, strict=True)]
    assert (sum(h for h, _ in hits_misses), sum(m for _, m in hits_misses)) == (12, 6), hits_misses
    for r, got in served:
        np.testing.assert_allclose(got, per_pair(reordered_model, r, reordered_model.cfg), atol=1e-5, rtol=0)


def test_affinity_rides_out_a_killed_replica_and_its_users_hit_on_their_new_one(
    replicas: list[TritonServer], reordered_model: AstroModel
) -> None:
    """Eight users each cached on their replica; then four threads (two users each, one call at a time) send
    their pages while the replica holding most of them is SIGKILLed: no request fails, every score is exact,
    its users miss once each (at most) on the survivor, and afterwards every user hits there."""
    rng = np.random.default_rng(SEED + 4)
    print(f"seed {SEED + 4}")
    reqs = users(8, rng)
    spec = ServingSpec.from_config(reordered_model.cfg)
    homes = [home(r, spec, replicas) for r in reqs]
    victim = max(replicas, key=lambda s: sum(h is s for h in homes))
    survivor = next(s for s in replicas if s is not victim)
    moved = sum(h is victim for h in homes)
    assert 0 < moved < len(reqs), "seeded users all live on one replica"
    results: list[tuple[int, npt.NDArray[np.float32]]] = []
    errors: list[BaseException] = []
    sent = [0]
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with AstroClient(",".join(s.grpc_url for s in replicas), max_in_flight=1) as client:

            def send(i: int) -> None:
                r = reqs[i]
                scores = client.score(r.history, r.candidates, r.scenario, r.timestamp)
                with lock:
                    results.append((i, scores))
                    sent[0] += 1

            for i in range(len(reqs)):  # each user's first page: one miss each, on its own replica
                send(i)

            def work(k: int) -> None:
                j = 0
                while not stop.is_set() and sent[0] < 2000:
                    try:
                        send(k + 4 * (j % 2))
                    except Exception as e:  # collected and asserted on below
                        errors.append(e)
                    j += 1

            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            try:
                wait_until(lambda: sent[0] >= 40 or bool(errors))
                at_kill = cache_counts(survivor)
                victim.kill()  # mid-load, with calls in flight
                killed_at = sent[0]
                wait_until(lambda: sent[0] >= killed_at + 60 or bool(errors))
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=120)
            assert not any(t.is_alive() for t in threads), "load threads did not finish"
            after_load = cache_counts(survivor)
            for i in range(len(reqs)):  # every user once more: all on the survivor, all hits
                send(i)
            final = delta(cache_counts(survivor), after_load)
    finally:
        victim.start(ready_models=[ENSEMBLE], timeout_s=180)  # the module's other tests need both
    assert errors == [], errors[:3]
    assert sent[0] >= killed_at + 60
    misses_after_kill = delta(after_load, at_kill)[1]
    assert 1 <= misses_after_kill <= moved, (misses_after_kill, moved)  # the victim's users, once each at most
    assert final == (len(reqs), 0), final
    for i, got in results:
        np.testing.assert_allclose(got, per_pair(reordered_model, reqs[i], reordered_model.cfg), atol=1e-5, rtol=0)


def wait_until(done: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_round_robin_over_two_replicas_rides_out_a_killed_one(
    replicas: list[TritonServer], reordered_model: AstroModel
) -> None:
    """A bounded load through one client with default settings over both replicas; one is SIGKILLed
    mid-way: every request answered exactly, both replicas served traffic."""
    a, b = replicas
    rng = np.random.default_rng(SEED + 1)
    print(f"seed {SEED + 1}")
    reqs = users(8, rng)
    before = {id(s): inference_count(s) for s in replicas}
    results: dict[int, list[npt.NDArray[np.float32]]] = {i: [] for i in range(len(reqs))}
    errors: list[BaseException] = []
    stop = threading.Event()
    sent = [0]
    lock = threading.Lock()
    n_threads, cap = 4, 2000  # bounded: at most `cap` requests, and the waits below are bounded in time

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 120
        while sent[0] < count and time.monotonic() < deadline and not errors:
            time.sleep(0.005)

    with AstroClient(f"{a.grpc_url},{b.grpc_url}", lb="round_robin") as client:

        def work(k: int) -> None:
            j = 0
            while not stop.is_set() and sent[0] < cap:
                i = (k + j) % len(reqs)
                j += 1
                r = reqs[i]
                try:
                    scores = client.score(r.history, r.candidates, r.scenario, r.timestamp)
                except Exception as e:  # collected and asserted on below
                    errors.append(e)
                    continue
                with lock:
                    results[i].append(scores)
                    sent[0] += 1

        threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        try:
            wait_for(60)
            served_by_b = inference_count(b) - before[id(b)]
            b.kill()  # mid-way, with calls in flight
            killed_at = sent[0]
            wait_for(killed_at + 120)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "load threads did not finish"

    assert errors == [], errors[:3]
    assert sent[0] >= killed_at + 120, (killed_at, sent[0])
    served_by_a = inference_count(a) - before[id(a)]
    assert served_by_a > 0 and served_by_b > 0, (served_by_a, served_by_b)
    for i, r in enumerate(reqs):
        want = per_pair(reordered_model, r, reordered_model.cfg)
        for got in results[i]:
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
