"""The client against real Triton servers serving a model trained with a *reordered* behaviour
vocabulary: the client blocks events by the vocabulary the server publishes; and two replicas of
it on loopback, balanced by gRPC's round_robin, one killed under load with no failed request.

The model is the tiny preset with ``behaviors=("like", "play", "skip", "share")`` (id 0 is "like",
not "play" as in every preset), seeded and untrained: only the plumbing is under test, and its
scores depend on which block each event lands in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc as grpcclient

from client import AstroClient, EventHistory, ScoreRequest
from contract.config import AstroConfig
from contract.serving_spec import ServingSpec
from contract.tensors import ENSEMBLE, ITEM_SCORER, USER_ENCODER
from export.onnx_graphs import export_graphs
from export.parity import torch_per_pair
from export.repository import write_repository
from model.astro import AstroModel
from model.random_inputs import RandomRequest
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
    graphs = export_graphs(reordered_model, root / "onnx", "fp32", progress=lambda _: None)
    files = {USER_ENCODER: graphs.user_encoder, ITEM_SCORER: graphs.item_scorer}
    write_repository(root / "repo", reordered_model.cfg, "python", files, "fp32", progress=lambda _: None)
    return root / "repo"


@pytest.fixture(scope="module")
def replicas(reordered_repo: Path) -> Iterator[list[TritonServer]]:
    """Two tritonservers serving the same repository on free loopback ports, started side by side."""
    servers = [TritonServer(reordered_repo), TritonServer(reordered_repo)]
    errors: list[BaseException] = []

    def start(server: TritonServer) -> None:
        try:
            server.start(ready_models=[ENSEMBLE], timeout_s=180)
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
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
    return torch_per_pair(model, RandomRequest.from_history(r.history, r.candidates, r.scenario, r.timestamp, cfg))[0]


def inference_count(server: TritonServer) -> int:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(ENSEMBLE, as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0].get("inference_count", 0))


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

    with AstroClient(f"{a.grpc_url},{b.grpc_url}") as client:

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
