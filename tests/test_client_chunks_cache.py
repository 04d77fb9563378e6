"""The client's chunked requests against the real server with Triton's response cache on ``user_encoder``.

A request with more candidates than ``max_candidates`` goes out as one ``B=1`` call per chunk, all
with the same encoder inputs (the user's blocks at its own Tb, the request scenario), the first
chunk answered before the rest are sent: the first chunk misses, every other one hits, and a user's
next request hits whoever else was in the batch. Counted from Triton's own statistics.

The model is the tiny preset with ``max_candidates=8`` (seeded, untrained), so a chunked request is
small; one cached server serves the module. Scores are held to the un-chunked request run in
process by ONNX Runtime on the same graphs, and to PyTorch's per-pair reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc as grpcclient
from server_helpers import export_repository

from client import AstroClient, AsyncAstroClient, EventHistory, ScoreRequest, split_evenly
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, ITEM_SCORER, USER_ENCODER
from export.parity import OrtPipeline, torch_per_pair
from model.astro import AstroModel
from serve.response_cache import cache_sizing
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
F32 = npt.NDArray[np.float32]
NOW = 1_700_000_000
MAX_CANDIDATES = 8
CHUNKED = 2 * MAX_CANDIDATES + 1  # three chunks: 6 + 6 + 5
FP32_ATOL = 1e-5  # served vs PyTorch per-pair, as in test_serving_e2e
ORT_ATOL = 1e-6  # served vs the same graphs in process: only the candidate count of a run differs


@dataclass
class Served:
    model: AstroModel
    ort: OrtPipeline  # the same graphs, in process
    server: TritonServer
    stats: grpcclient.InferenceServerClient

    def cache(self, model: str = USER_ENCODER) -> tuple[int, int]:
        """(hits, misses) of ``model`` so far."""
        stats = self.stats.get_inference_statistics(model_name=model)
        inference = stats.model_stats[0].inference_stats
        return int(inference.cache_hit.count), int(inference.cache_miss.count)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cfg = AstroConfig.from_name("tiny").replace(max_candidates=MAX_CANDIDATES)
    torch.manual_seed(7)
    model = AstroModel(cfg).eval()
    root = tmp_path_factory.mktemp("chunks-cache")
    graphs, repo = export_repository(model, root)
    with TritonServer(repo, cache_size=cache_sizing(repo, 64).size) as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        stats = grpcclient.InferenceServerClient(server.grpc_url)
        yield Served(model, OrtPipeline(graphs), server, stats)
        stats.close()


def user(seed: int, events: int = 20) -> EventHistory:
    rng = np.random.default_rng(seed)
    return EventHistory(
        rng.integers(1, 10**9, events),
        rng.integers(0, 4, events),
        rng.integers(0, 4, events),
        NOW - np.sort(rng.integers(60, 10**6, events))[::-1],
    )


def request(seed: int, n: int = CHUNKED, history: EventHistory | None = None, scenario: int = 2) -> ScoreRequest:
    rng = np.random.default_rng(seed + 10_000)
    return ScoreRequest(history if history is not None else user(seed), rng.integers(1, 10**9, n), scenario, NOW)


def check_scores(served: Served, r: ScoreRequest, got: F32) -> None:
    """Equal to the un-chunked request through the same graphs in process, and to PyTorch per-pair."""
    whole = RequestBatch.from_history(r.history, r.candidates, r.scenario, r.timestamp, served.model.cfg)
    assert got.shape == (len(r.candidates), served.model.cfg.n_tasks) and got.dtype == np.float32
    np.testing.assert_allclose(got, served.ort(whole)[0], atol=ORT_ATOL, rtol=0)
    np.testing.assert_allclose(got, torch_per_pair(served.model, whole)[0], atol=FP32_ATOL, rtol=0)


def test_a_chunked_request_misses_once_then_hits(served: Served) -> None:
    r = request(1)
    assert len(split_evenly(CHUNKED, MAX_CANDIDATES)) == 3
    before = served.cache()
    with AstroClient(served.server.grpc_url) as client:
        got = client.score(r.history, r.candidates, r.scenario, r.timestamp)
        after_first = served.cache()
        page = request(2, history=r.history)  # the next page: same history and scenario, fresh candidates
        next_page = client.score(page.history, page.candidates, page.scenario, page.timestamp)
    after_page = served.cache()
    assert (after_first[0] - before[0], after_first[1] - before[1]) == (2, 1)  # (hits, misses)
    assert (after_page[0] - after_first[0], after_page[1] - after_first[1]) == (3, 0)
    assert served.cache(ITEM_SCORER) == (0, 0)
    check_scores(served, r, got)
    check_scores(served, page, next_page)


def test_the_async_client_misses_once_then_hits(served: Served) -> None:
    r = request(3)

    async def go() -> F32:
        async with AsyncAstroClient(served.server.grpc_url, max_in_flight=8) as client:
            await client.get_spec()
            before = served.cache()
            got = await client.score(r.history, r.candidates, r.scenario, r.timestamp)
            after = served.cache()
            assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
            return got

    check_scores(served, r, asyncio.run(go()))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_users_entry_does_not_depend_on_the_rest_of_the_batch(served: Served, mode: str) -> None:
    """Users of one score_batch (short and long histories, one chunked) each make their own cache entry:
    alone afterwards, each one hits."""
    seed, scenario = (100, 1) if mode == "sync" else (200, 3)  # the new user: one entry per scenario
    reqs = [
        request(seed, 5, user(seed, events=2)),
        request(seed + 1, CHUNKED, user(seed + 1, events=40)),
        request(seed + 2, 3, EventHistory.empty(), scenario),
    ]

    async def batch() -> list[F32]:
        async with AsyncAstroClient(served.server.grpc_url, max_in_flight=8) as client:
            return await client.score_batch(reqs)

    before = served.cache()
    if mode == "sync":
        with AstroClient(served.server.grpc_url, max_in_flight=8) as client:
            got = client.score_batch(reqs)
    else:
        got = asyncio.run(batch())
    middle = served.cache()
    assert (middle[0] - before[0], middle[1] - before[1]) == (2, 3)  # one miss per user, the 2 later chunks hit
    with AstroClient(served.server.grpc_url) as client:
        for k, r in enumerate(reqs):
            alone = request(seed + 50 + k, 4, r.history, r.scenario)
            was = served.cache()
            client.score(alone.history, alone.candidates, alone.scenario, alone.timestamp)
            now = served.cache()
            assert (now[0] - was[0], now[1] - was[1]) == (1, 0), f"user {k} missed alone"
    for r, g in zip(reqs, got, strict=True):
        check_scores(served, r, g)
