"""The training protocol and the peers, on tiny synthetic data (seconds on one CPU thread).

* early stopping keeps the epoch of lowest validation LogLoss and restores its weights;
* training parameters out of range are refused, naming each;
* each peer (mean-pooled history, single-stack transformer) trains a step, is evaluated, and keeps
  ASTRO's rows (its data differs only in the history; a different row is refused).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import torch_threads

from contract.config import AstroConfig, BlockSpec
from model.astro import AstroModel, History, Request
from model.peers import PEERS, PooledModel, build_peer, peer_config, same_rows, train_peer
from model.train import (
    Splits,
    TrainParams,
    add_training_arguments,
    concat,
    fit,
    load_data,
    make_deterministic,
    mean_logloss,
    parse_blocks,
    refit,
    train_model,
    training_params,
)

TINY = AstroConfig.from_name("tiny")
N_TRAIN, N_TEST = 48, 16  # synthetic users; validation: N_TRAIN // 8

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1, seed=None):
        yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_data("synthetic", TINY, N_TRAIN, N_TEST, seed=0)


def test_splits_are_disjoint_draws(splits: Splits) -> None:
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (N_TRAIN, N_TRAIN // 8, N_TEST)
    firsts = {ds.cand_item_ids[0].tobytes() for ds in (splits.train, splits.valid, splits.test)}
    assert len(firsts) == 3, "training, validation and evaluation users are different draws"


def test_early_stopping_restores_the_best_epochs_weights(splits: Splits) -> None:
    """48 users at a high learning rate overfit: validation LogLoss bottoms out, then rises. The model
    handed back scores the validation rows exactly as the chosen epoch did, not as the last one."""
    make_deterministic(0)
    model = AstroModel(TINY)
    params = TrainParams(max_epochs=8, patience=3, batch_size=8, lr=3e-2, weight_decay=0.0, warmup_epochs=0)
    record = fit(model, splits, TINY.tasks, params, desc="overfit")
    curve = [c["valid_mean"] for c in record["curve"]]
    chosen = record["chosen_epoch"]
    assert chosen == int(np.argmin(curve)) + 1
    assert chosen < record["epochs_run"], f"the run must overfit for this test to mean anything: {curve}"
    now, _ = mean_logloss(model, splits.valid, TINY.tasks)
    assert now == curve[chosen - 1] and now < curve[-1]
    # patience: stopped exactly `patience` epochs after the best (or ran out of epochs)
    assert record["epochs_run"] in (chosen + params.patience, params.max_epochs)


def test_patience_stops_early(splits: Splits) -> None:
    make_deterministic(0)
    params = TrainParams(max_epochs=8, patience=1, batch_size=8, lr=3e-2, weight_decay=0.0, warmup_epochs=0)
    record = fit(AstroModel(TINY), splits, TINY.tasks, params, desc="patience 1")
    assert record["epochs_run"] == min(record["chosen_epoch"] + 1, params.max_epochs)
    assert record["epochs_run"] < params.max_epochs


def test_no_stop_before_the_warmup_epochs(splits: Splits) -> None:
    """The same run with a warm-up: patience counts from the warm-up's end when the best epoch came earlier."""
    make_deterministic(0)
    params = TrainParams(max_epochs=8, patience=1, batch_size=8, lr=3e-2, weight_decay=0.0, warmup_epochs=0)
    early = fit(AstroModel(TINY), splits, TINY.tasks, params, desc="no warm-up")
    assert early["epochs_run"] < 5, "the run must stop before the warm-up's end for this test to mean anything"
    make_deterministic(0)
    warm = fit(AstroModel(TINY), splits, TINY.tasks, replace(params, warmup_epochs=5), desc="warm-up 5")
    assert warm["epochs_run"] >= 6
    assert [c["valid_mean"] for c in warm["curve"][: early["epochs_run"]]] == [c["valid_mean"] for c in early["curve"]]


def test_refit_replays_the_chosen_epochs_from_the_same_init(splits: Splits) -> None:
    """Refit re-runs fit's schedule and order from the same initial weights: on the training rows alone it
    lands on exactly the weights fit chose; train_model's refit then adds the validation rows."""
    make_deterministic(0)
    model = AstroModel(TINY)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    params = TrainParams(max_epochs=4, patience=1, batch_size=8, lr=3e-2, weight_decay=0.0, warmup_epochs=0)
    record = fit(model, splits, TINY.tasks, params, desc="select")
    chosen = {k: v.clone() for k, v in model.state_dict().items()}
    refit(model, initial, splits.train, params, record["chosen_epoch"])
    assert all(torch.equal(chosen[k], v) for k, v in model.state_dict().items())
    both = concat(splits.train, splits.valid)
    assert len(both) == N_TRAIN + N_TRAIN // 8
    assert np.array_equal(both.cand_item_ids[N_TRAIN:], splits.valid.cand_item_ids)
    make_deterministic(0)
    run = train_model(AstroModel(TINY), TINY, splits, TrainParams(max_epochs=2, batch_size=8, refit=True), "refit")
    assert run.metrics["fitted_rows"] == len(both) and run.metrics["train_rows"] == N_TRAIN
    assert not all(torch.equal(chosen[k], v) for k, v in run.model.state_dict().items())


def test_training_parameters_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"max_epochs=0 \(need >= 1\), lr=0.0 \(need > 0\)"):
        TrainParams(max_epochs=0, lr=0.0)
    with pytest.raises(ValueError, match=r"weight_decay=-1"):
        TrainParams(weight_decay=-1)


@pytest.mark.parametrize("kind", PEERS)
def test_peer_trains_and_is_evaluated_on_the_same_rows(kind: str, splits: Splits) -> None:
    make_deterministic(0)
    pcfg = peer_config(kind, TINY)
    before = {k: v.clone() for k, v in build_peer(kind, pcfg).state_dict().items()}
    run = train_peer(
        kind, TINY, TrainParams(max_epochs=2, batch_size=16), "synthetic", N_TRAIN, N_TEST, reference=splits
    )
    after = run.model.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed no weight"
    m = run.metrics
    assert m["peer"] == kind and m["test_rows"] == N_TEST and 1 <= m["validation"]["chosen_epoch"] <= 2
    for metric in ("auc", "logloss", "gauc", "ece"):
        assert all(np.isfinite(v) for v in m["model"][metric].values()), (metric, m["model"][metric])
    assert run.test_probs.shape == splits.test.labels.shape


def test_peer_refuses_rows_that_differ_from_astros(splits: Splits) -> None:
    other = load_data("synthetic", TINY, N_TRAIN, N_TEST, seed=1)
    assert not same_rows(splits, other) and same_rows(
        splits, load_data("synthetic", peer_config("pooled", TINY), N_TRAIN, N_TEST, 0)
    )
    with pytest.raises(RuntimeError, match="rows differ from ASTRO's"):
        train_peer("pooled", TINY, TrainParams(max_epochs=1), "synthetic", N_TRAIN, N_TEST, reference=other)


def test_pooled_model_averages_the_whole_history_and_ignores_padding(splits: Splits) -> None:
    """The user is the mean over every event, the oldest of a long history too; padding adds nothing."""
    torch.manual_seed(0)
    model = PooledModel(peer_config("pooled", TINY, history=300)).eval()
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.integers(1, 10**6, (1, 1, 300)))
    zeros = torch.zeros_like(items)
    h = History(items, zeros, zeros, zeros)
    req = Request(torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64))
    cand = torch.from_numpy(rng.integers(1, 10**6, (1, 5)))
    with torch.no_grad():
        out = model(h, req, cand)
        oldest = items.clone()
        oldest[0, 0, -1] = 7
        assert not torch.equal(model(History(oldest, zeros, zeros, zeros), req, cand), out)
        padded = torch.cat([items, torch.zeros(1, 1, 20, dtype=torch.int64)], -1)
        pz = torch.zeros_like(padded)
        torch.testing.assert_close(model(History(padded, pz, pz, pz), req, cand), out)
    assert out.shape == (1, 5, TINY.n_tasks)


def test_transformer_peer_is_one_stack_over_every_behaviour() -> None:
    pcfg = peer_config("transformer", TINY)
    assert pcfg.n_blocks == 1 and pcfg.blocks[0].behaviors == () and not pcfg.bgf
    assert (pcfg.d_model, pcfg.n_layers, pcfg.n_heads) == (TINY.d_model, TINY.n_layers, TINY.n_heads)
    with pytest.raises(ValueError, match="unknown peer 'gbdt'"):
        peer_config("gbdt", TINY)


def test_batches_feed_every_peer(splits: Splits) -> None:
    for kind in PEERS:
        pcfg = peer_config(kind, TINY)
        ds = load_data("synthetic", pcfg, 8, 4, seed=0).train
        h, req, cand = ds.take(np.arange(4)).trimmed().to_torch()
        with torch.no_grad():
            out = build_peer(kind, pcfg)(h, req, cand)
        assert out.shape == (4, ds.cand_item_ids.shape[1], TINY.n_tasks) and torch.isfinite(out).all()


def test_make_train_defaults_are_the_committed_checkpoints_recipe() -> None:
    """`make train` with no TRAIN_ARGS trains the embedded checkpoint's recipe (the settings chosen on validation)."""
    p = argparse.ArgumentParser()
    add_training_arguments(p)
    a = p.parse_args([])
    metrics = json.loads((ROOT / "checkpoints" / "small" / "metrics.json").read_text())
    params = {k: v for k, v in asdict(training_params(p, a)).items() if k in metrics["params"]}
    assert params == metrics["params"]
    assert a.dropout == metrics["config"]["dropout"]


def test_a_block_layout_is_parsed_from_the_command_line() -> None:
    assert parse_blocks("play:play:48,like:like+share:32,recent::16") == (
        BlockSpec(name="play", behaviors=("play",), max_len=48),
        BlockSpec(name="like", behaviors=("like", "share"), max_len=32),
        BlockSpec(name="recent", behaviors=(), max_len=16),
    )
    for bad, says in (("play:play", "name:behaviour"), ("play:play:x", "name:behaviour"), ("p:play:0", "max_len")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse_blocks(bad)
