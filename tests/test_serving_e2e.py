"""End to end: the real tritonserver serving a freshly exported repository, called through the
client and through raw tritonclient, compared with the PyTorch per-pair reference path.

fp32 tolerance 1e-5 abs on probabilities: the served graphs run the same fp32 arithmetic in
ONNX Runtime, which fuses and reorders reductions (~1e-7 observed); the per-pair path differs
from the split graphs only by summation order in attention.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
from server_helpers import triton_infer

from client import AstroClient, AsyncAstroClient, EventHistory, ScoreRequest
from contract.request_batch import RequestBatch
from contract.serving_spec import ServingSpec
from contract.tensors import SCORES_OUTPUT
from export.parity import torch_per_pair
from model.astro import AstroModel
from model.random_inputs import random_request
from model.synthetic import SyntheticWorld, WorldSpec
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
FP32_ATOL = 1e-5


def per_pair_sample(model: AstroModel, req: RequestBatch, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Per-pair reference for candidates ``idx`` only: a candidate's score does not depend on the
    other candidates (M-FALCON mask, tested in test_model_paths), so a sample is an exact check
    at a fraction of the per-pair cost."""
    sub = RequestBatch(**{**req.as_dict(), "cand_item_ids": req.cand_item_ids[:, idx]})
    return torch_per_pair(model, sub)


def sample_idx(n: int, rng: np.random.Generator, k: int = 48) -> npt.NDArray[np.int64]:
    """k candidates spread over [0, n), always with the first and last."""
    return np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, size=k)])).astype(np.int64)


def users(n: int, seed: int) -> list[tuple[EventHistory, int]]:
    world = SyntheticWorld(WorldSpec(seed=seed))
    rng = np.random.default_rng(seed)
    out = [(world.user(rng)[0], int(rng.integers(0, 4))) for _ in range(n)]
    out[0] = (EventHistory.empty(), 1)  # a brand-new user
    return out


def test_raw_tritonclient_matches_per_pair(triton: TritonServer, small_model: AstroModel, seed: int) -> None:
    cfg = small_model.cfg
    rng = np.random.default_rng(seed)
    shapes = [
        (1, 1, 1, 0),
        (3, 17, 40, 1),
        (cfg.max_batch_size, 5, 8, 2),
        (2, cfg.max_block_len, 64, 0),
        (1, cfg.max_block_len, cfg.max_candidates, 0),
        (2, 3, 5, 2),
    ]
    for b, tb, n, empty in shapes:
        req = random_request(cfg, rng, b, tb, n, empty)
        served = triton_infer(triton.grpc_url, req.as_dict())[SCORES_OUTPUT]
        assert served.shape == (b, n, cfg.n_tasks) and served.dtype == np.float32
        np.testing.assert_allclose(
            served,
            torch_per_pair(small_model, req),
            atol=FP32_ATOL,
            rtol=0,
            err_msg=f"B={b} Tb={tb} N={n} empty={empty}",
        )
        assert ((served > 0) & (served < 1)).all()


def test_client_discovers_the_served_spec(triton: TritonServer, small_model: AstroModel) -> None:
    with AstroClient(triton.grpc_url) as client:
        assert client.get_spec() == ServingSpec.from_config(small_model.cfg)
        health = client.health()
        assert health["ready"] and health["model_ready"]


def test_client_scores_match_per_pair(triton: TritonServer, small_model: AstroModel, seed: int) -> None:
    rng = np.random.default_rng(seed)
    now = 1_700_000_000
    with AstroClient(triton.grpc_url) as client:
        for history, scenario in users(6, seed=int(rng.integers(1000))):
            cands = rng.integers(1, 10**9, size=int(rng.integers(1, 200)))
            served = client.score(history, cands, scenario, now)
            idx = sample_idx(len(cands), rng, k=16)
            ref = per_pair_sample(
                small_model, RequestBatch.from_history(history, cands, scenario, now, small_model.cfg), idx
            )[0]
            np.testing.assert_allclose(served[idx], ref, atol=FP32_ATOL, rtol=0)


def test_client_chunks_long_candidate_lists(triton: TritonServer, small_model: AstroModel, seed: int) -> None:
    """2.5x the served maximum: split into chunks, scored, reassembled in order (checked at every
    chunk edge and a random sample in between)."""
    rng = np.random.default_rng(seed)
    history, scenario = users(2, seed=3)[1]
    n = int(2.5 * small_model.cfg.max_candidates)
    cands = rng.integers(1, 10**9, size=n)
    with AstroClient(triton.grpc_url) as client:
        served = client.score(history, cands, scenario, 1_700_000_000)
    assert served.shape == (n, small_model.cfg.n_tasks)
    m = small_model.cfg.max_candidates
    edges = np.array([e + d for e in range(0, n, m) for d in (-1, 0) if 0 <= e + d < n])
    idx = np.unique(np.concatenate([edges, sample_idx(n, rng)]))
    ref = per_pair_sample(
        small_model, RequestBatch.from_history(history, cands, scenario, 1_700_000_000, small_model.cfg), idx
    )[0]
    np.testing.assert_allclose(served[idx], ref, atol=FP32_ATOL, rtol=0)


def test_batch_form_matches_single_calls(triton: TritonServer, small_model: AstroModel, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reqs = [
        ScoreRequest(h, rng.integers(1, 10**9, size=int(rng.integers(1, 300))), s, 1_700_000_000)
        for h, s in users(5, seed=11)
    ]
    with AstroClient(triton.grpc_url) as client:
        batched = client.score_batch(reqs)
        for r, got in zip(reqs, batched, strict=True):
            req = RequestBatch.from_history(r.history, r.candidates, r.scenario, r.timestamp, small_model.cfg)
            ref = torch_per_pair(small_model, req)[0]
            np.testing.assert_allclose(got, ref, atol=FP32_ATOL, rtol=0)


def test_concurrent_requests_equal_sequential(triton: TritonServer, seed: int) -> None:
    """Eight threads at once (Triton may batch them dynamically) give the sequential answers.

    Tolerance 1e-6: a dynamically batched run may use another matmul blocking than a lone one."""
    rng = np.random.default_rng(seed)
    reqs = [ScoreRequest(h, rng.integers(1, 10**9, size=64), s, 1_700_000_000) for h, s in users(24, seed=5)]
    with AstroClient(triton.grpc_url) as client:
        sequential = [client.score(r.history, r.candidates, r.scenario, r.timestamp) for r in reqs]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda r: client.score(r.history, r.candidates, r.scenario, r.timestamp), reqs))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_async_client_matches_sync(triton: TritonServer, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reqs = [ScoreRequest(h, rng.integers(1, 10**9, size=50), s, 1_700_000_000) for h, s in users(6, seed=8)]

    async def run() -> list[npt.NDArray[np.float32]]:
        async with AsyncAstroClient(triton.grpc_url) as client:
            return list(
                await asyncio.gather(*(client.score(r.history, r.candidates, r.scenario, r.timestamp) for r in reqs))
            )

    got = asyncio.run(run())
    with AstroClient(triton.grpc_url) as client:
        for r, g in zip(reqs, got, strict=True):
            np.testing.assert_allclose(
                g, client.score(r.history, r.candidates, r.scenario, r.timestamp), atol=1e-6, rtol=0
            )
