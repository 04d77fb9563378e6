"""MovieLens-100k rows and the ranking metrics.

A hand-made ``.inter`` file pins the rating -> behaviour mapping, the block layout, the
labels and the chronological split (boundary ties included) without the wheel. On the
real ml-100k (needs ``pip install --no-deps recbole==1.2.1``; skipped, saying so, when
absent) the leakage test checks every row: no held-out rating in any training history
or training candidate list, every history strictly older than its request, newest first
and right-padded. The metrics are checked against values computed by hand.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from contract.config import AstroConfig
from model import diagnostics, metrics, movielens
from model.movielens import INSTALL, MovieLensNotFound, MovieLensSplit, build_split, find_leaks, read_ratings
from model.synthetic import Dataset

TINY = AstroConfig.from_name("tiny")  # blocks play(12), like+share(12), recent(12)
PLAY, LIKE, SHARE, SKIP = (TINY.behaviors.index(b) for b in ("play", "like", "share", "skip"))
HOME = TINY.scenarios.index("home")

# user 1: eight ratings 100 s apart; user 2: ratings 11 and 12 tie the held-out rating 13 at t=300
TOY = [  # (user, item, rating, timestamp)
    *((1, i, r, 100 * i) for i, r in zip(range(1, 9), (5, 1, 3, 4, 2, 5, 3, 4), strict=True)),
    *((2, i, r, t) for i, r, t in zip(range(9, 15), (4, 4, 3, 2, 5, 1), (100, 200, 300, 300, 300, 400), strict=True)),
]


def toy_ratings() -> movielens.Ratings:
    users, items, stars, times = (np.array(c) for c in zip(*TOY, strict=True))
    return movielens.Ratings(users, items, stars.astype(np.float64), times)


@pytest.fixture
def toy(tmp_path: Path) -> MovieLensSplit:
    path = tmp_path / "toy.inter"  # columns shuffled and one extra: they are found by header name
    lines = ["timestamp:float\titem_id:token\textra:token\tuser_id:token\trating:float"]
    lines += [f"{t}\t{i}\tx\t{u}\t{r}" for u, i, r, t in TOY]
    path.write_text("\n".join(lines) + "\n")
    ratings = read_ratings(path)
    assert ratings.user_ids.tolist() == [u for u, *_ in TOY] and ratings.ratings.tolist() == [r for *_, r, _ in TOY]
    return build_split(ratings, TINY, seed=0, held_out=2, negatives=2, min_history=0)


def test_toy_split_rows_and_masks(toy: MovieLensSplit) -> None:
    # user 1: test = items 7, 8; rows cut before items 5, 3, 1 (the last with an empty history); the newest
    # (before item 5) is the validation row. user 2: test = items 13 (t=300), 14; items 11, 12 tie the cut
    # t=300 and are dropped; one row before item 9, kept for training (a user keeps a training row)
    assert toy.test_users.tolist() == [1, 2]
    assert toy.train_users.tolist() == [1, 1, 2]
    assert toy.valid_users.tolist() == [1]
    assert toy.is_test.tolist() == [False] * 6 + [True] * 2 + [False] * 4 + [True] * 2
    assert toy.is_train.tolist() == [True] * 6 + [False] * 2 + [True] * 2 + [False] * 4
    assert toy.is_valid.tolist() == [False] * 4 + [True] * 2 + [False] * 8
    assert toy.test.request_timestamp[:, 0].tolist() == [700, 300]
    assert toy.valid.request_timestamp[:, 0].tolist() == [500]
    assert toy.train.request_timestamp[:, 0].tolist() == [300, 100, 100]
    for ds in (toy.train, toy.valid, toy.test):
        assert (ds.request_scenario == HOME).all()
    assert toy.train.cand_item_ids.shape == (3, 4) and toy.train.labels.shape == (3, 4, 2)
    # candidates: the rated ones plus 2 negatives the user never rated
    for ds, expected_rated in ((toy.valid, [{5, 6}]), (toy.train, [{3, 4}, {1, 2}, {9, 10}])):
        for row, rated in enumerate(expected_rated):
            cand = set(ds.cand_item_ids[row].tolist())
            assert rated <= cand and len(cand) == 4
            never = set(range(9, 15)) if rated <= set(range(1, 9)) else set(range(1, 9))
            assert cand - rated <= never
    assert {7, 8} <= set(toy.test.cand_item_ids[0].tolist())
    assert {13, 14} <= set(toy.test.cand_item_ids[1].tolist())


def test_toy_split_without_validation_keeps_every_row_for_training(tmp_path: Path) -> None:
    users, items, stars, times = (np.array(c) for c in zip(*TOY, strict=True))
    ratings = movielens.Ratings(users, items, stars.astype(np.float64), times)
    split = build_split(ratings, TINY, held_out=2, negatives=2, min_history=0, valid_rows=0)
    assert split.train_users.tolist() == [1, 1, 1, 2] and len(split.valid) == 0 and not split.is_valid.any()


def test_toy_labels_follow_the_rating_mapping(toy: MovieLensSplit) -> None:
    rating = {(u, i): r for u, i, r, _ in TOY}
    for ds, users in ((toy.train, toy.train_users), (toy.valid, toy.valid_users), (toy.test, toy.test_users)):
        for row, user in enumerate(users.tolist()):
            for item, lab in zip(ds.cand_item_ids[row].tolist(), ds.labels[row].tolist(), strict=True):
                r = rating.get((user, item))
                # play_complete = rating >= 3, like = rating >= 4, negatives 0
                assert lab == ([0.0, 0.0] if r is None else [float(r >= 3), float(r >= 4)]), (user, item, r)
    by_item = dict(zip(toy.test.cand_item_ids[0].tolist(), toy.test.labels[0].tolist(), strict=True))
    assert by_item[7] == [1.0, 0.0] and by_item[8] == [1.0, 1.0]  # ratings 3 and 4


def test_toy_history_blocks(toy: MovieLensSplit) -> None:
    """User 1's evaluation history: ratings 5 1 3 4 2 5 of items 1..6 -> play (+like / +skip) events."""
    ds = toy.test
    pad = [0] * 6
    assert ds.hist_item_ids[0, 0].tolist() == [6, 5, 4, 3, 2, 1, *pad]  # play block: every rating
    assert (ds.hist_behaviors[0, 0, :6] == PLAY).all()
    assert ds.hist_timestamps[0, 0].tolist() == [600, 500, 400, 300, 200, 100, *pad]
    assert ds.hist_item_ids[0, 1].tolist() == [6, 4, 1] + [0] * 9  # like block: ratings >= 4
    assert (ds.hist_behaviors[0, 1, :3] == LIKE).all()
    # recent block: all 11 events newest first; a rating's second event (like/skip) precedes its play
    assert ds.hist_item_ids[0, 2].tolist() == [6, 6, 5, 5, 4, 4, 3, 2, 2, 1, 1, 0]
    beh = [LIKE, PLAY, SKIP, PLAY, LIKE, PLAY, PLAY, SKIP, PLAY, LIKE, PLAY, 0]
    assert ds.hist_behaviors[0, 2].tolist() == beh
    assert (ds.hist_scenarios[0] == HOME).all()
    # user 2: history stops strictly before the cut t=300 (the tied items 11, 12 are not in it)
    assert ds.hist_item_ids[1, 0].tolist() == [10, 9] + [0] * 10
    # the earliest training row of user 1 has an empty history: all padding
    assert not toy.train.hist_item_ids[1].any() and not toy.train.hist_timestamps[1].any()
    assert toy.valid.hist_item_ids[0, 0].tolist() == [4, 3, 2, 1] + [0] * 8  # row cut before item 5
    assert toy.train.hist_item_ids[0, 0].tolist() == [2, 1] + [0] * 10  # row cut before item 3


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MovieLensNotFound) as e:
        read_ratings()
    assert INSTALL in str(e.value) and "\n" not in str(e.value)


def test_refuses_tasks_it_cannot_label() -> None:
    users, items, stars, times = (np.array(c) for c in zip(*TOY, strict=True))
    ratings = movielens.Ratings(users, items, stars.astype(np.float64), times)
    with pytest.raises(ValueError, match="share_rate"):
        build_split(ratings, TINY.replace(tasks=("play_complete", "share_rate")), held_out=2, negatives=2)


# ---- the real ml-100k ------------------------------------------------------------------

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason=f"MovieLens-100k ships in the recbole wheel: {INSTALL}"
)


@pytest.fixture(scope="module")
def ml100k() -> tuple[movielens.Ratings, MovieLensSplit]:
    ratings = read_ratings()
    return ratings, build_split(ratings, AstroConfig.from_name("small"), seed=0, held_out=10, negatives=20)


@needs_wheel
def test_reads_the_wheel_without_importing_recbole(ml100k: tuple[movielens.Ratings, MovieLensSplit]) -> None:
    ratings, _ = ml100k
    assert len(ratings) == 100_000 and np.unique(ratings.user_ids).size == 943
    assert np.unique(ratings.item_ids).size == 1682 and set(np.unique(ratings.ratings).tolist()) == {1, 2, 3, 4, 5}
    assert "recbole" not in sys.modules


@needs_wheel
def test_no_held_out_rating_leaks_into_training(ml100k: tuple[movielens.Ratings, MovieLensSplit]) -> None:
    ratings, split = ml100k
    assert not (split.is_test & split.is_train).any()
    test_events: dict[int, set[tuple[int, int]]] = {}
    test_items: dict[int, set[int]] = {}
    first_test_time: dict[int, int] = {}
    held = (a[split.is_test].tolist() for a in (ratings.user_ids, ratings.item_ids, ratings.timestamps))
    for u, i, t in zip(*held, strict=True):
        test_events.setdefault(u, set()).add((i, t))
        test_items.setdefault(u, set()).add(i)
        first_test_time[u] = min(t, first_test_time.get(u, t))
    assert len(test_events) == 943 and sum(map(len, test_events.values())) == 9430
    pairs = list(zip(ratings.user_ids.tolist(), ratings.item_ids.tolist(), strict=True))
    rated = set(pairs)
    trained = {p for p, keep in zip(pairs, split.is_train.tolist(), strict=True) if keep}
    ds = split.train
    assert len(ds) > 7000
    for row, user in enumerate(split.train_users.tolist()):
        valid = ds.hist_item_ids[row] != 0
        hist = set(zip(ds.hist_item_ids[row][valid].tolist(), ds.hist_timestamps[row][valid].tolist(), strict=True))
        assert not hist & test_events[user], f"training row {row} of user {user} holds a held-out rating"
        assert (ds.hist_timestamps[row][valid] < first_test_time[user]).all()
        cand = set(ds.cand_item_ids[row].tolist())
        assert not cand & test_items[user], f"training row {row} of user {user} has a held-out candidate"
        assert len(cand) == ds.cand_item_ids.shape[1]  # no repeated candidate
        # a candidate the user rated is one of their training ratings; the others they never rated
        assert all((user, i) in trained for i in cand if (user, i) in rated)
    # evaluation rows: the 10 held-out movies are candidates, and the history stops before them
    for row, user in enumerate(split.test_users.tolist()):
        assert test_items[user] <= set(split.test.cand_item_ids[row].tolist())
        valid = split.test.hist_item_ids[row] != 0
        assert (split.test.hist_timestamps[row][valid] < first_test_time[user]).all()
        assert split.test.request_timestamp[row, 0] == first_test_time[user]


@needs_wheel
def test_validation_rows_come_from_the_training_side_only(ml100k: tuple[movielens.Ratings, MovieLensSplit]) -> None:
    """Validation rows: each user's newest training-side row; no held-out rating reaches them, and no
    validation rating reaches a training row (find_leaks checks every row; it finds nothing here)."""
    ratings, split = ml100k
    assert not (split.is_valid & ~split.is_train).any() and not (split.is_valid & split.is_test).any()
    assert 700 < len(split.valid) == np.unique(split.valid_users).size < 943  # users with two rows or more
    assert int(split.is_valid.sum()) == 10 * len(split.valid)
    newest_train = dict(zip(split.train_users.tolist(), split.train.request_timestamp[:, 0].tolist(), strict=True))
    for user, at in zip(split.valid_users.tolist(), split.valid.request_timestamp[:, 0].tolist(), strict=True):
        assert at > newest_train[user], "a user's validation row is newer than each of their training rows"
    assert find_leaks(ratings, split) == []


def plant(ds: Dataset, field: str, row: int, where: tuple[int, ...], value: int) -> Dataset:
    """A copy of ``ds`` with one value of one field changed."""
    a = getattr(ds, field).copy()
    a[(row, *where)] = value
    return dataclasses.replace(ds, **{field: a})


def test_find_leaks_catches_planted_leaks(toy: MovieLensSplit) -> None:
    """User 1: held-out items 7 (t=700) and 8; validation items 5 and 6; training row 0 (request t=300)
    has the history [2, 1]. Each planted leak is found and named; the clean split has none."""
    ratings = toy_ratings()
    assert find_leaks(ratings, toy) == []

    def leaks(train: Dataset = toy.train, valid: Dataset = toy.valid) -> list[str]:
        return find_leaks(ratings, dataclasses.replace(toy, train=train, valid=valid))

    # a held-out rating in a training history (at its own time: also after the request)
    planted = plant(plant(toy.train, "hist_item_ids", 0, (0, 2), 7), "hist_timestamps", 0, (0, 2), 700)
    assert leaks(train=planted) == [
        "train row 0 (user 1): test movies [7] in its history",
        "train row 0 (user 1): a history event at or after the request time",
    ]
    # a validation movie in a training history, at an innocent-looking time
    planted = plant(plant(toy.train, "hist_item_ids", 0, (0, 2), 5), "hist_timestamps", 0, (0, 2), 50)
    assert leaks(train=planted) == ["train row 0 (user 1): valid movies [5] in its history"]
    # a held-out movie among the validation row's candidates; a validation movie among a training row's
    assert leaks(valid=plant(toy.valid, "cand_item_ids", 0, (0,), 8)) == [
        "valid row 0 (user 1): test movies [8] among its candidates"
    ]
    assert leaks(train=plant(toy.train, "cand_item_ids", 0, (0,), 6)) == [
        "train row 0 (user 1): valid movies [6] among its candidates"
    ]
    # a held-out movie in the validation row's history
    assert leaks(valid=plant(toy.valid, "hist_item_ids", 0, (2, 0), 8)) == [
        "valid row 0 (user 1): test movies [8] in its history"
    ]


@needs_wheel
def test_histories_newest_first_right_padded(ml100k: tuple[movielens.Ratings, MovieLensSplit]) -> None:
    _, split = ml100k
    for ds in (split.train, split.test):
        valid = ds.hist_item_ids != 0
        assert (valid[..., 1:] <= valid[..., :-1]).all(), "padding only at the right end"
        for f in (ds.hist_behaviors, ds.hist_scenarios, ds.hist_timestamps):
            assert not f[~valid].any(), "padding slots are all zero"
        ts = np.where(valid, ds.hist_timestamps, np.iinfo(np.int64).min)
        assert (ts[..., 1:] <= ts[..., :-1]).all(), "newest first"
        assert (ds.hist_timestamps.max(axis=(1, 2)) < ds.request_timestamp[:, 0]).all(), "history precedes request"
        cfg = AstroConfig.from_name("small")
        play, like, share = (cfg.behaviors.index(b) for b in ("play", "like", "share"))
        assert (ds.hist_behaviors[:, 0][valid[:, 0]] == play).all()
        assert (ds.hist_behaviors[:, 1][valid[:, 1]] == like).all()
        assert not (ds.hist_behaviors == share).any()


@needs_wheel
def test_ml100k_labels_match_the_mapping(ml100k: tuple[movielens.Ratings, MovieLensSplit]) -> None:
    ratings, split = ml100k
    rating = {
        (u, i): r
        for u, i, r in zip(ratings.user_ids.tolist(), ratings.item_ids.tolist(), ratings.ratings.tolist(), strict=True)
    }
    for ds, users in ((split.train, split.train_users), (split.test, split.test_users)):
        for row in np.random.default_rng(0).choice(len(ds), 50, replace=False).tolist():
            user = int(users[row])
            rated = 0
            for item, lab in zip(ds.cand_item_ids[row].tolist(), ds.labels[row].tolist(), strict=True):
                r = rating.get((user, item))
                rated += r is not None
                assert lab == ([0.0, 0.0] if r is None else [float(r >= 3), float(r >= 4)])
            assert rated == 10  # held_out rated candidates, the 20 others never rated


@needs_wheel
def test_ml100k_is_deterministic_per_seed(ml100k: tuple[movielens.Ratings, MovieLensSplit]) -> None:
    ratings, split = ml100k
    cfg = AstroConfig.from_name("small")
    again = build_split(ratings, cfg, seed=0, held_out=10, negatives=20)
    other = build_split(ratings, cfg, seed=1, held_out=10, negatives=20)
    assert np.array_equal(again.test.cand_item_ids, split.test.cand_item_ids)
    assert np.array_equal(again.train.labels, split.train.labels)
    assert not np.array_equal(other.test.cand_item_ids, split.test.cand_item_ids)
    assert np.array_equal(other.test.hist_item_ids, split.test.hist_item_ids)  # the seed only draws negatives


# ---- metrics ---------------------------------------------------------------------------

# rows x 2 candidates x tasks (a, b); users A = row 0, B = rows 1-2, C = row 3 (a single class: skipped)
PROBS = np.array(
    [[[0.6, 0.5], [0.4, 0.5]], [[0.9, 0.5], [0.8, 0.5]], [[0.3, 0.5], [0.1, 0.5]], [[0.2, 0.5], [0.7, 0.5]]]
)
LABELS = np.array([[[1, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]])
TASKS = ("a", "b")


def test_auc_and_logloss_by_hand() -> None:
    # positives 0.6 0.9 0.3 vs negatives 0.4 0.8 0.1 0.2 0.7: 0.6 beats 3, 0.9 beats 5, 0.3 beats 2 -> 10/15
    auc = metrics.auc(PROBS, LABELS, TASKS)
    assert auc["a"] == pytest.approx(10 / 15)
    assert math.isnan(auc["b"])  # a single class
    p = [0.6, 0.4, 0.9, 0.8, 0.3, 0.1, 0.2, 0.7]
    y = [1, 0, 1, 0, 1, 0, 0, 0]
    expected = -sum(math.log(q if t else 1 - q) for q, t in zip(p, y, strict=True)) / 8
    ll = metrics.logloss(PROBS, LABELS, TASKS)
    assert ll["a"] == pytest.approx(expected) and ll["b"] == pytest.approx(math.log(2))


def test_gauc_by_hand() -> None:
    # grouped: A = [1,0] vs [0.6,0.4] -> 1.0 (2 candidates); B = [1,0,1,0] vs [0.9,0.8,0.3,0.1] -> 0.75 (4)
    # C has labels [0,0]: skipped. (2 * 1.0 + 4 * 0.75) / 6 = 5/6
    groups = np.array([7, 3, 3, 5])
    assert metrics.gauc(PROBS, LABELS, TASKS, groups)["a"] == pytest.approx(5 / 6)
    assert metrics.gauc_users(PROBS, LABELS, TASKS, groups) == {"a": 2, "b": 0}
    # ungrouped, each row is a user: rows 0-2 each rank their positive first -> 1.0; row 3 skipped
    assert metrics.gauc(PROBS, LABELS, TASKS)["a"] == pytest.approx(1.0)
    assert metrics.gauc_users(PROBS, LABELS, TASKS) == {"a": 3, "b": 0}
    assert math.isnan(metrics.gauc(PROBS, LABELS, TASKS)["b"])  # no user with both classes
    out = metrics.evaluate(PROBS, LABELS, TASKS, groups)
    assert set(out) == {"auc", "logloss", "gauc", "ece", "mean_prediction", "label_rate"}
    assert out["gauc"]["a"] == pytest.approx(5 / 6)
    assert all(isinstance(v, float) for d in out.values() for v in d.values())


def test_calibration_by_hand(tmp_path: Path) -> None:
    # task a: the 8 predictions fall in 8 different bins of width 1/15, so ECE = mean |p - y| = 3.4 / 8
    cal = metrics.calibration(PROBS, LABELS, TASKS)
    assert cal["ece"]["a"] == pytest.approx(3.4 / 8)
    assert cal["mean_prediction"]["a"] == pytest.approx(0.5) and cal["label_rate"]["a"] == pytest.approx(3 / 8)
    # task b: every prediction 0.5 in one bin, every label 0 -> ECE 0.5; pooled in a bin, errors cancel
    assert cal["ece"]["b"] == pytest.approx(0.5) and cal["label_rate"]["b"] == 0.0
    half = np.full((2, 2, 1), 0.55)
    assert metrics.calibration(half, np.array([[[1], [0]], [[1], [0]]]), ("c",))["ece"]["c"] == pytest.approx(0.05)
    assert metrics.calibration(PROBS[..., :1], LABELS[..., :1], ("a",))["ece"]["a"] == cal["ece"]["a"]
    png = tmp_path / "reliability.png"
    metrics.reliability_plot({"m": (PROBS, LABELS)}, TASKS, png, "by hand")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gauc_equals_sklearn_per_user() -> None:
    """The vectorised per-user AUC equals a loop of ``roc_auc_score``, ties and uneven groups included."""
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 6, (300, 12, 2)) / 5  # coarse scores: many ties
    labels = (rng.random((300, 12, 2)) < 0.3).astype(np.float32)
    groups = rng.integers(0, 80, 300)
    got = metrics.gauc(probs, labels, TASKS, groups)
    for i, t in enumerate(TASKS):
        total = weight = 0.0
        for g in np.unique(groups):
            y, p = labels[groups == g, :, i].ravel(), probs[groups == g, :, i].ravel()
            if y.min() != y.max():
                total += y.size * roc_auc_score(y, p)
                weight += y.size
        assert got[t] == pytest.approx(total / weight, abs=1e-12)


def test_metrics_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="T=3"):
        metrics.auc(PROBS, LABELS, ("a", "b", "c"))
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.logloss(PROBS, LABELS * 2, TASKS)
    with pytest.raises(ValueError, match="sigmoid"):
        metrics.gauc(PROBS * 3, LABELS, TASKS)
    with pytest.raises(ValueError, match="one id per row"):
        metrics.gauc(PROBS, LABELS, TASKS, np.array([1, 2]))


def test_diagnostic_cuts_on_the_toy_split(toy: MovieLensSplit) -> None:
    """rated_mask marks exactly the held-out movies among the evaluation candidates; the rated-only AUC
    reads those pairs alone; heavy/light GAUC split the rows by user."""
    ratings = toy_ratings()
    rated = diagnostics.rated_mask(toy, ratings.item_ids, ratings.user_ids)
    for row, expected in enumerate(({7, 8}, {13, 14})):
        assert set(toy.test.cand_item_ids[row][rated[row]].tolist()) == expected
    # a model that ranks by the movie id: among user 1's rated movies 7 (rating 3) < 8 (rating 4)
    probs = np.repeat((toy.test.cand_item_ids / 20.0)[..., None], 2, -1)
    cut = diagnostics.cuts(probs, toy, rated, np.array([True, False]), TINY.tasks)
    y = toy.test.labels[rated]
    assert cut["rated_only_auc"]["like"] == pytest.approx(roc_auc_score(y[:, 1], probs[rated][:, 1]))
    assert cut["heavy_gauc"] == metrics.gauc(probs[:1], toy.test.labels[:1], TINY.tasks)
