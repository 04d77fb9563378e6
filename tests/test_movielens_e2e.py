"""The MovieLens-trained checkpoint goes through export -> Triton -> client unchanged.

``checkpoints/small-movielens`` (``make train DATA=movielens``) is exported with the real
``python -m export`` code path, served by the real ``tritonserver``, and scored through the
project's client for real MovieLens users' histories (flat events, cut into blocks by the
client from the server's published vocabulary); the served scores equal PyTorch per-pair.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from client import AstroClient, EventHistory
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE
from export.__main__ import main as export_main
from export.parity import torch_per_pair
from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from model.movielens import MovieLensNotFound, read_ratings
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
CHECKPOINT = DEFAULT_CHECKPOINT.parent / "small-movielens"
SEED = 20251124
# fp32 end to end: the served graphs and the per-pair reference differ by rounding only (test_serving_e2e)
SERVED_ATOL = 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("movielens")
    rc = export_main(
        ["--target", "python", "--checkpoint", str(CHECKPOINT), "--out", str(root / "repo"), "--work-dir", str(root)]
    )
    assert rc == 0, f"python -m export exited {rc}"
    with TritonServer(root / "repo") as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        yield server.grpc_url


def test_movielens_checkpoint_serves_real_users(served: str) -> None:
    try:
        ratings = read_ratings()
    except MovieLensNotFound as e:
        pytest.fail(f"{e} (the Makefile installs it; the checkpoint's test needs the real data)")
    model = load_checkpoint(CHECKPOINT)
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    like, play = model.cfg.behaviors.index("like"), model.cfg.behaviors.index("play")
    with AstroClient(served) as client:
        assert client.get_spec().behaviors == model.cfg.behaviors
        for user in rng.choice(np.unique(ratings.user_ids), size=4, replace=False):
            mine = ratings.user_ids == user
            items, stars, times = ratings.item_ids[mine], ratings.ratings[mine], ratings.timestamps[mine]
            behaviors = np.where(stars >= 4, like, play).astype(np.int64)
            history = EventHistory.from_lists(items, behaviors, np.zeros_like(items), times)
            now = int(times.max()) + 3600
            candidates = rng.integers(1, 1683, size=40)
            served_scores = client.score(history, candidates, 0, now)
            expected = torch_per_pair(model, RequestBatch.from_history(history, candidates, 0, now, model.cfg))[0]
            assert served_scores.shape == expected.shape == (40, model.cfg.n_tasks)
            diff = float(np.abs(served_scores - expected).max())
            assert diff <= SERVED_ATOL, f"user {user}: served vs PyTorch per-pair differ by {diff:.3g}"
