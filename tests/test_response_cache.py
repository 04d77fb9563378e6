"""Triton's response cache on ``user_encoder``, against the real server.

One cached server for the module (``--cache-config local,size=...`` with room for ``CAPACITY`` users at
the longest history), beside the shared uncached ``triton`` fixture, both serving the same freshly
exported repository. Requests are sent one at a time, so nothing is batched and a served score is
exactly reproducible; the cache counters come from Triton's model statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from contract.blocks import EventHistory
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, GRAPHS, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER
from export.repository import TARGETS, composing_config
from model.checkpoint import DEFAULT_CHECKPOINT, load_config
from model.random_inputs import NOW, random_request
from serve.__main__ import build_parser, response_cache_size
from serve.response_cache import DEFAULT_USERS, cache_sizing
from serve.triton_server import TritonServer

CAPACITY = 6  # users the cached server's cache holds at the longest history
F32 = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def cfg() -> AstroConfig:
    return load_config(DEFAULT_CHECKPOINT)


class Endpoint:
    """One server: score a request, and what the cache did for it (user_encoder hits, misses; item_scorer's)."""

    def __init__(self, server: TritonServer) -> None:
        self.server = server
        self.client = grpcclient.InferenceServerClient(server.grpc_url)

    def cache_counts(self) -> dict[str, tuple[int, int]]:
        out = {}
        for m in self.client.get_inference_statistics(as_json=True)["model_stats"]:
            inf = m.get("inference_stats", {})
            out[m["name"]] = (
                int(inf.get("cache_hit", {}).get("count", 0)),
                int(inf.get("cache_miss", {}).get("count", 0)),
            )
        return out

    def score(self, req: RequestBatch) -> tuple[F32, tuple[int, int]]:
        """Scores and the (hits, misses) of user_encoder during the call; item_scorer must show none."""
        before = self.cache_counts()
        inputs = []
        for name, arr in req.as_dict().items():
            inp = grpcclient.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = self.client.infer(ENSEMBLE, inputs, outputs=[grpcclient.InferRequestedOutput(SCORES_OUTPUT)])
        after = self.cache_counts()
        assert after.get(ITEM_SCORER, (0, 0)) == (0, 0), "item_scorer must never use the cache"
        b, a = before.get(USER_ENCODER, (0, 0)), after.get(USER_ENCODER, (0, 0))
        scores: F32 = result.as_numpy(SCORES_OUTPUT)
        return scores, (a[0] - b[0], a[1] - b[1])


@pytest.fixture(scope="module")
def cached(exported_repo: Path) -> Iterator[Endpoint]:
    size = cache_sizing(exported_repo, CAPACITY).size
    with TritonServer(exported_repo, cache_size=size) as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        endpoint = Endpoint(server)
        yield endpoint
        endpoint.client.close()


@pytest.fixture(scope="module")
def uncached(triton: TritonServer) -> Iterator[Endpoint]:
    endpoint = Endpoint(triton)
    yield endpoint
    endpoint.client.close()


HIT, MISS = (1, 0), (0, 1)


def full_user(cfg: AstroConfig, seed: int, candidates: int = 32) -> RequestBatch:
    """A user whose longest block is full (Tb = max_block_len): the largest cache entry."""
    return random_request(cfg, np.random.default_rng(seed), 1, cfg.max_block_len, candidates)


def same_user(req: RequestBatch, seed: int, scenario: int | None = None) -> RequestBatch:
    """The same history, fresh candidates and a later request time (and another scenario if given)."""
    rng = np.random.default_rng(seed)
    return RequestBatch(
        req.hist_item_ids,
        req.hist_behaviors,
        req.hist_scenarios,
        req.hist_timestamps,
        req.request_scenario if scenario is None else np.array([[scenario]], np.int64),
        req.request_timestamp + int(rng.integers(1, 3600)),
        rng.integers(1, 10**9, size=req.cand_item_ids.shape).astype(np.int64),
    )


# ---- no server ---------------------------------------------------------------------------------


def test_only_the_encoder_is_cached_for_every_target(cfg: AstroConfig) -> None:
    for target in TARGETS:
        for graph in GRAPHS:
            config = composing_config(cfg, graph, target, "fp32", 1)
            assert config.response_cache.enable == (graph == USER_ENCODER), (target, graph)


def test_sizing_rule(exported_repo: Path, cfg: AstroConfig) -> None:
    s_max = cfg.n_blocks * cfg.max_block_len
    per_user = 2 * cfg.n_layers * cfg.n_heads * s_max * cfg.head_dim * 4 + s_max  # fp32 keys/values + bool mask
    sizing = cache_sizing(exported_repo, 10)
    assert (sizing.bytes_per_user, sizing.size, sizing.max_user_tokens) == (per_user, 10 * per_user, s_max)
    assert f"{10 * per_user:,} bytes" in sizing.describe()


def test_serve_cli_cache_options(exported_repo: Path) -> None:
    def size(*argv: str) -> int | None:
        return response_cache_size(
            build_parser().parse_args(["--repository", str(exported_repo), *argv]), exported_repo
        )[0]

    assert size() == cache_sizing(exported_repo, DEFAULT_USERS).size
    assert size("--cache-users", "3") == cache_sizing(exported_repo, 3).size
    assert size("--cache-size", "12345") == 12345
    assert size("--no-cache") is None
    line = response_cache_size(build_parser().parse_args([]), exported_repo)[1]
    assert f"{DEFAULT_USERS:,} users" in line


# ---- the real server -----------------------------------------------------------------------------


@pytest.mark.server
def test_a_hit_returns_bit_identical_scores(cfg: AstroConfig, cached: Endpoint, uncached: Endpoint) -> None:
    req = full_user(cfg, 1)
    first, what = cached.score(req)
    assert what == MISS
    again, what = cached.score(req)
    assert what == HIT
    np.testing.assert_array_equal(again, first)
    # a later page for the same user: fresh candidates and request time, the encoder's inputs unchanged
    page = same_user(req, 2)
    scores, what = cached.score(page)
    assert what == HIT
    np.testing.assert_array_equal(scores, uncached.score(page)[0])


@pytest.mark.server
def test_one_new_history_event_misses(cfg: AstroConfig, cached: Endpoint) -> None:
    rng = np.random.default_rng(3)
    n = 30
    history = EventHistory(
        rng.integers(1, 10**9, n).astype(np.int64),
        rng.integers(0, cfg.n_behaviors, n).astype(np.int64),
        rng.integers(0, cfg.n_scenarios, n).astype(np.int64),
        np.sort(NOW - rng.integers(60, 10**7, n)).astype(np.int64),
    )
    cands = rng.integers(1, 10**9, 16)
    req = RequestBatch.from_history(history, cands, 1, NOW, cfg)
    assert cached.score(req)[1] == MISS
    assert cached.score(req)[1] == HIT
    grown = EventHistory(*(np.append(a, v) for a, v in zip(
        (history.item_ids, history.behaviors, history.scenarios, history.timestamps), (777, 0, 1, NOW - 1), strict=True
    )))  # fmt: skip
    newer = RequestBatch.from_history(grown, cands, 1, NOW + 5, cfg)
    assert cached.score(newer)[1] == MISS
    assert cached.score(newer)[1] == HIT


@pytest.mark.server
def test_another_scenario_misses(cfg: AstroConfig, cached: Endpoint) -> None:
    req = full_user(cfg, 4)
    scenario = int(req.request_scenario[0, 0])
    assert cached.score(req)[1] == MISS
    other = same_user(req, 5, scenario=(scenario + 1) % cfg.n_scenarios)
    assert cached.score(other)[1] == MISS
    assert cached.score(same_user(req, 6))[1] == HIT  # the first scenario's entry is still there


@pytest.mark.server
def test_cached_and_uncached_servers_agree(cfg: AstroConfig, cached: Endpoint, uncached: Endpoint) -> None:
    """Random traffic over a few users (so pages repeat histories): every score bit-identical on both servers."""
    rng = np.random.default_rng(8)
    users = [random_request(cfg, rng, 1, int(rng.integers(1, cfg.max_block_len + 1)), 8) for _ in range(4)]
    hits = 0
    for i in range(24):
        user = users[int(rng.integers(len(users)))]
        req = same_user(user, 100 + i, scenario=int(rng.integers(cfg.n_scenarios)) if i % 3 == 0 else None)
        scores, (hit, _) = cached.score(req)
        hits += hit
        np.testing.assert_array_equal(scores, uncached.score(req)[0])
    assert hits >= 8, f"only {hits} of 24 repeated-user requests hit"


@pytest.mark.server
def test_the_cache_is_bounded(cfg: AstroConfig, cached: Endpoint) -> None:
    """Three times more full-size users than the cache holds: every one misses, the server stays healthy, the
    oldest entries are evicted (a miss again) while the newest still hit."""
    users = [full_user(cfg, 1000 + i, candidates=8) for i in range(3 * CAPACITY)]
    for u in users:
        assert cached.score(u)[1] == MISS
    client: Any = cached.client
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(ENSEMBLE)
    assert cached.score(users[-1])[1] == HIT
    assert cached.score(users[0])[1] == MISS, "the oldest entry should have been evicted"


@pytest.mark.server
def test_item_scorer_never_reports_cache_activity(cfg: AstroConfig, cached: Endpoint) -> None:
    """A miss and a hit of its own (so it holds run alone and in any order): the encoder counts both, the scorer
    neither (``score`` checks the scorer after each call too)."""
    req = full_user(cfg, 9)
    assert cached.score(req)[1] == MISS
    assert cached.score(same_user(req, 10))[1] == HIT
    counts = cached.cache_counts()
    assert counts[ITEM_SCORER] == (0, 0)
    hits, misses = counts[USER_ENCODER]
    assert hits > 0 and misses > 0
