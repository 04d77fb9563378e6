"""The one batch type: its shape checks name the array, its shape and the expected one; ``to_torch``
gives the model exactly the arrays (and ``contract`` never imports torch); rows and trimming keep
requests whole; the datasets and the random generators produce it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import SEED, case_rng

from contract.config import AstroConfig
from contract.request_batch import INPUTS, History, Request, RequestBatch
from contract.tensors import ITEM_SCORER, USER_ENCODER
from model.astro import AstroModel, ItemScorer, UserEncoder
from model.random_inputs import NOW, random_history, random_request
from model.synthetic import Dataset, SyntheticWorld, WorldSpec

REPO = Path(__file__).resolve().parents[1]
CFG = AstroConfig.from_name("tiny")


def arrays(b: int = 2, nb: int = 3, tb: int = 5, n: int = 4) -> dict[str, np.ndarray]:
    z = np.zeros
    hist = {name: z((b, nb, tb), np.int64) for name in INPUTS[:4]}
    return {**hist, "request_scenario": z((b, 1), np.int64), "request_timestamp": z((b, 1), np.int64),
            "cand_item_ids": z((b, n), np.int64)}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("hist_scenarios", np.zeros((2, 3, 4), np.int64), "hist_scenarios: shape (2, 3, 4), expected [B, Nb, Tb] = "
         "(2, 3, 5) (Tb = 5 from hist_item_ids)"),
        ("hist_timestamps", np.zeros((2, 2, 5), np.int64), "(Nb = 3 from hist_item_ids)"),
        ("cand_item_ids", np.zeros((3, 4), np.int64), "cand_item_ids: shape (3, 4), expected [B, N] = (2, 4) "
         "(B = 2 from hist_item_ids)"),
        ("request_scenario", np.zeros((2, 2), np.int64), "request_scenario: shape (2, 2), expected [B, 1] = (2, 1)"),
        ("request_timestamp", np.zeros(2, np.int64), "request_timestamp: shape (2,) has rank 1, expected [B, 1]"),
        ("hist_item_ids", np.zeros((2, 3, 5), np.int32), "hist_item_ids: dtype int32, expected an int64 numpy array"),
        ("cand_item_ids", [[1, 2, 3, 4]] * 2, "cand_item_ids: a list, expected an int64 numpy array [B, N]"),
    ],
)  # fmt: skip
def test_bad_shapes_are_named(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"RequestBatch\.") as e:
        RequestBatch(**{**arrays(), name: value})
    assert message in str(e.value)


def test_shapes_beyond_the_served_limits_are_a_batch() -> None:
    """Construction checks structure, not limits: tests build what a server must refuse."""
    big = CFG.max_block_len + 1
    req = random_request(CFG, case_rng(1), CFG.max_batch_size + 1, big, CFG.max_candidates + 1)
    assert len(req) == CFG.max_batch_size + 1 and req.hist_item_ids.shape[-1] == big
    assert len(RequestBatch(**arrays(b=0))) == 0  # an empty dataset split is a batch of none


def test_to_torch_is_the_arrays_and_contract_stays_torch_free() -> None:
    req = random_request(CFG, case_rng(2), 3, 6, 7, empty_users=1)
    h, r, cand = req.to_torch()
    assert isinstance(h, History) and isinstance(r, Request)
    for name, tensor in zip(INPUTS, (*h, *r, cand), strict=True):
        assert tensor.dtype == torch.int64 and np.array_equal(tensor.numpy(), getattr(req, name)), name
    code = "import sys, contract.request_batch; assert 'torch' not in sys.modules, 'contract imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_graph_args_feed_the_export_wrappers_in_order() -> None:
    """encoder_args/scorer_args are the wrappers' positional inputs: the same as the inputs by name."""
    torch.manual_seed(SEED)
    model = AstroModel(CFG).eval()
    req = random_request(CFG, case_rng(3), 2, 4, 5)
    t = req.to_torch()
    by_name = {k: torch.from_numpy(v) for k, v in req.graph_inputs(USER_ENCODER).items()}
    scorer_in = {k: torch.from_numpy(v) for k, v in req.graph_inputs(ITEM_SCORER).items()}
    with torch.no_grad():
        cache = UserEncoder(model)(*t.encoder_args())
        for a, b in zip(cache, UserEncoder(model)(**by_name), strict=True):
            assert torch.equal(a, b)
        got = ItemScorer(model)(*t.scorer_args(), *cache)
        want = ItemScorer(model)(**scorer_in, user_keys=cache[0], user_values=cache[1], user_mask=cache[2])
    assert torch.equal(got, want)


def test_take_and_trimmed_keep_requests_whole() -> None:
    req = random_request(CFG, case_rng(4), 4, CFG.max_block_len, 6, empty_users=1)
    rows = req.take([3, 1])
    for name in INPUTS:
        assert np.array_equal(getattr(rows, name), getattr(req, name)[[3, 1]]), name
    short = dataclasses.replace(req, **{n: np.pad(getattr(req, n), ((0, 0), (0, 0), (0, 9))) for n in INPUTS[:4]})
    cut = short.trimmed()
    assert cut.hist_item_ids.shape[-1] == CFG.max_block_len  # one user fills one block to the end
    for name in INPUTS:
        assert np.array_equal(getattr(cut, name), getattr(req, name)), name
    assert req.take([0]).trimmed().hist_item_ids.shape[-1] == 1  # a user with no history: one padding slot


def test_dataset_is_a_batch_with_labels() -> None:
    ds = SyntheticWorld(WorldSpec(candidates_per_user=6)).dataset(CFG, 5, seed=1)
    assert isinstance(ds, RequestBatch) and ds.labels.shape == (5, 6, CFG.n_tasks)
    rows = ds.take([4, 0])
    assert isinstance(rows, Dataset) and np.array_equal(rows.labels, ds.labels[[4, 0]])
    with pytest.raises(ValueError, match=r"Dataset.labels: float32 shape \(5, 5, 2\), expected float32 \[U, N, T\]"):
        dataclasses.replace(ds, labels=ds.labels[:, :5])


def test_random_history_draws_inside_its_ranges() -> None:
    rng = case_rng(5)
    h = random_history(rng, 500, CFG)
    assert len(h) == 500 and all(getattr(h, f).dtype == np.int64 for f in ("item_ids", "timestamps"))
    assert (h.item_ids >= 1).all() and (h.timestamps < NOW).all() and (np.diff(h.timestamps) >= 0).all()
    assert set(h.behaviors.tolist()) == set(range(CFG.n_behaviors))
    assert set(h.scenarios.tolist()) == set(range(CFG.n_scenarios))
    odd = random_history(rng, 500, CFG, item_ids=(0, 3), behaviors=(-2, 0), timestamps=(0, 4), chronological=False)
    assert set(odd.item_ids.tolist()) == {0, 1, 2} and set(odd.behaviors.tolist()) == {-2, -1}
    assert (np.diff(odd.timestamps) < 0).any()  # left in draw order
    assert len(random_history(rng, 0, CFG)) == 0
