"""MovieLens-100k as ASTRO training and evaluation rows (the SUMI format of :mod:`model.synthetic`).

    python -m model.movielens --preset small   # prints a summary of the rows built

Source: ``recbole/dataset_example/ml-100k/ml-100k.inter`` inside the ``recbole==1.2.1``
wheel (100,000 ratings 1-5 of 943 users on 1,682 movies, unix-second timestamps),
installed with ``pip install --no-deps recbole==1.2.1``. The file is only located
(``importlib.util.find_spec``, which does not run the package); recbole is never
imported, so none of its dependencies are needed, and nothing touches the network.

Ratings -> history events (behaviour ids index ``cfg.behaviors``):

* every rating is a ``play`` event at the rating's timestamp;
* a rating >= 4 is *also* a ``like`` event, its own event with the same timestamp
  (so the ``play`` block holds every rated movie, the ``like`` block the liked ones);
* a rating <= 2 is *also* a ``skip`` event, same timestamp (the user did not finish it:
  the complement of the ``play_complete`` label below); rating 3 is a plain play;
* ``share`` never occurs (MovieLens has no such signal);
* MovieLens has no scenario: every event and every request is scenario 0, ``home``.

So the ``recent`` block (all behaviours) sees a liked or disliked movie twice, as its
play and its like/skip, which is how a music app logs them too.

Labels of a candidate, per task (``cfg.tasks`` must be a subset of these):

* ``play_complete`` = rating >= 3 (the user "finished" it), ``like`` = rating >= 4;
* sampled negatives (movies the user never rated, at any time) are 0 for every task.

Chronological split, per user (leave-last-out; not a global time split, so a user's
training rows may postdate another user's held-out ratings):

* events are ordered by (timestamp, item id); the user's last ``held_out`` ratings are
  the *test* ratings, and ``cut`` is the timestamp of the earliest of them;
* the *training* ratings are those with timestamp < ``cut``; ratings that tie ``cut`` but
  are not among the last ``held_out`` (854 of 100k in ml-100k) are dropped from both
  sides, so every training event of a user is strictly older than each of their test events;
* one evaluation row per user: history = all training ratings (all before ``cut``),
  request time = ``cut``, candidates = the ``held_out`` test movies plus ``negatives``
  sampled ones;
* rolling training rows, anchored at the end of the training ratings: cut points
  ``i = n - k, n - 2k, ...`` (``k = held_out``, ``n`` training ratings, ``i >= min_history``),
  history = training ratings with timestamp strictly before rating ``i``'s, request time =
  that timestamp, candidates = training ratings ``i .. i+k-1`` plus ``negatives`` sampled ones.
  Each training rating is a candidate in at most one row.
* validation rows (model selection: early stopping, hyper-parameters): the newest
  ``valid_rows`` of those rolling rows of each user who keeps at least one row for
  training. They come from the training side only (the evaluation rows never reach
  them), and they are chronological per user: every training row's history stops before
  the user's validation candidates (a training row's history ends before its own
  candidates, which are older than any newer row's), so no validation rating is in a
  training history or candidate list; the validation rows' histories do hold the user's
  training ratings, as the evaluation rows' do.

Hence no test rating is ever in a training or validation history or candidate list, and
every history is strictly older than its request. Candidates are shuffled within a row.
Negatives are sampled uniformly, without replacement, from the movies the user never
rated, with a numpy generator seeded from ``seed`` (separate streams for train and test,
so the test rows do not depend on ``min_history``). Users with at most ``held_out``
ratings are left out (ml-100k has none: every user rated at least 20 movies).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contract.blocks import EventHistory, build_blocks
from contract.config import AstroConfig
from contract.program import program_name
from model.synthetic import Dataset

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

INSTALL = "pip install --no-deps recbole==1.2.1"
INTER = ("dataset_example", "ml-100k", "ml-100k.inter")
COLUMNS = ("user_id", "item_id", "rating", "timestamp")  # header names, before the ":type" suffix
TASK_MIN_RATING = {"play_complete": 3.0, "like": 4.0}  # label 1 when the candidate's rating is at least this
LIKE_MIN_RATING = 4.0  # a rating >= 4 also logs a "like" event
SKIP_MAX_RATING = 2.0  # a rating <= 2 also logs a "skip" event
SCENARIO = "home"  # MovieLens has no scenario


class MovieLensNotFound(FileNotFoundError):
    """The ml-100k file is not installed."""


@dataclass(frozen=True)
class Ratings:
    """The raw ratings, one entry per line of the ``.inter`` file, in file order."""

    user_ids: I64
    item_ids: I64
    ratings: F64
    timestamps: I64  # unix seconds

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])


@dataclass(frozen=True)
class MovieLensSplit:
    """Both datasets plus what a leakage check needs: the user of each row and which ratings are held out."""

    train: Dataset
    valid: Dataset
    test: Dataset
    train_users: I64  # [rows] user id of each training row
    valid_users: I64  # [rows] user id of each validation row
    test_users: I64  # [rows] user id of each evaluation row
    is_test: Mask  # [len(ratings)] held-out ratings (candidates of the evaluation rows)
    is_train: Mask  # [len(ratings)] ratings training and validation rows may use; neither: dropped boundary ties
    is_valid: Mask  # [len(ratings)] candidates of the validation rows (a subset of is_train)


def inter_path() -> Path:
    """Where the installed wheel keeps ``ml-100k.inter``, without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root).joinpath(*INTER)
        if path.is_file():
            return path
    raise MovieLensNotFound(f"MovieLens-100k not found (recbole/{'/'.join(INTER)}): install it with `{INSTALL}`")


def read_ratings(path: Path | None = None) -> Ratings:
    """Parse a tab-separated ``.inter`` file (default: the wheel's ml-100k), columns found by header name."""
    path = inter_path() if path is None else path
    with path.open(encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks columns {missing}")
    raw = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=[header.index(c) for c in COLUMNS], ndmin=2)
    ints = raw[:, [0, 1, 3]]
    if not np.array_equal(ints, np.round(ints)):
        raise ValueError(f"{path}: user ids, item ids and timestamps must be integers")
    if (raw[:, 1] <= 0).any():
        raise ValueError(f"{path}: item ids must be positive (0 is the padding id)")
    return Ratings(
        raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64), raw[:, 2].astype(np.float64), raw[:, 3].astype(np.int64)
    )


def load_movielens(cfg: AstroConfig, *, seed: int = 0, path: Path | None = None) -> MovieLensSplit:
    """Training, validation and evaluation rows of ml-100k for ``cfg``, split as :func:`build_split`'s
    defaults do; see the module docstring."""
    return build_split(read_ratings(path), cfg, seed=seed)


def build_split(
    ratings: Ratings,
    cfg: AstroConfig,
    *,
    seed: int = 0,
    held_out: int = 10,
    negatives: int = 20,
    min_history: int = 1,
    valid_rows: int = 1,
) -> MovieLensSplit:
    """Split ``ratings`` per user chronologically into training, validation and evaluation rows of
    ``held_out + negatives`` candidates each, histories cut into ``cfg``'s blocks at Tb = ``cfg.max_block_len``."""
    if held_out < 1 or negatives < 0 or min_history < 0 or valid_rows < 0:
        raise ValueError(
            "need held_out >= 1, negatives >= 0, min_history >= 0, valid_rows >= 0; "
            f"got {held_out}, {negatives}, {min_history}, {valid_rows}"
        )
    unknown = [t for t in cfg.tasks if t not in TASK_MIN_RATING]
    if unknown:
        raise ValueError(f"MovieLens labels tasks {list(TASK_MIN_RATING)}; config {cfg.name!r} also has {unknown}")
    builder = _RowBuilder(cfg, ratings, negatives)
    rng_train, rng_test = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    is_test = np.zeros(len(ratings), dtype=bool)
    is_train = np.zeros(len(ratings), dtype=bool)
    is_valid = np.zeros(len(ratings), dtype=bool)
    order = np.lexsort((ratings.item_ids, ratings.timestamps, ratings.user_ids))  # by user, then time, then item
    users, starts = np.unique(ratings.user_ids[order], return_index=True)
    for user, idx in zip(users.tolist(), np.split(order, starts[1:]), strict=True):
        n = idx.shape[0]
        if n <= held_out:
            continue
        test = idx[n - held_out :]
        cut = int(ratings.timestamps[test[0]])
        train = idx[: n - held_out][ratings.timestamps[idx[: n - held_out]] < cut]
        is_test[test], is_train[train] = True, True
        pool = np.setdiff1d(builder.catalogue, ratings.item_ids[idx])  # never rated by this user
        if pool.shape[0] < negatives:
            raise ValueError(f"user {user} left {pool.shape[0]} unrated items, fewer than negatives={negatives}")
        history = builder.events(train)
        builder.add("test", user, history, cut, test, pool, rng_test)
        cuts = list(range(train.shape[0] - held_out, min_history - 1, -held_out))  # newest row first
        n_valid = valid_rows if len(cuts) > valid_rows else 0  # the user keeps a training row
        for j, i in enumerate(cuts):
            at = int(ratings.timestamps[train[i]])
            part = "valid" if j < n_valid else "train"
            is_valid[train[i : i + held_out]] = part == "valid"
            builder.add(part, user, history, at, train[i : i + held_out], pool, rng_train)
    return MovieLensSplit(
        builder.dataset("train"),
        builder.dataset("valid"),
        builder.dataset("test"),
        builder.users("train"),
        builder.users("valid"),
        builder.users("test"),
        is_test,
        is_train,
        is_valid,
    )


def find_leaks(ratings: Ratings, split: MovieLensSplit, limit: int = 5) -> list[str]:
    """Every way a row could see what it must not (empty when the split is clean), up to ``limit`` each:

    * a held-out movie of the user (a user rates a movie once) in a training or validation history
      or among a training or validation row's candidates (never a training-side label, not even a negative);
    * a validation movie of the user in a training history or among a training row's candidates;
    * a history event at or after its row's request time.

    Checks the rows themselves, not how they were built, so a leak planted in any row shows."""
    held: dict[str, dict[int, set[int]]] = {"test": {}, "valid": {}}  # part -> user -> movies
    for part, mask in (("test", split.is_test), ("valid", split.is_valid)):
        for u, i in zip(ratings.user_ids[mask].tolist(), ratings.item_ids[mask].tolist(), strict=True):
            held[part].setdefault(u, set()).add(i)
    problems: list[str] = []
    rows = (("train", split.train, split.train_users), ("valid", split.valid, split.valid_users))
    for part, ds, users in rows:
        for row, user in enumerate(users.tolist()):
            where = f"{part} row {row} (user {user})"
            valid = ds.hist_item_ids[row] != 0
            events, cand = set(ds.hist_item_ids[row][valid].tolist()), set(ds.cand_item_ids[row].tolist())
            for source in ("test", "valid") if part == "train" else ("test",):
                mine = held[source].get(user, set())
                if events & mine:
                    problems.append(f"{where}: {source} movies {sorted(events & mine)[:3]} in its history")
                if cand & mine:
                    problems.append(f"{where}: {source} movies {sorted(cand & mine)[:3]} among its candidates")
            if (ds.hist_timestamps[row][valid] >= ds.request_timestamp[row, 0]).any():
                problems.append(f"{where}: a history event at or after the request time")
    return problems[:limit] if limit else problems


class _RowBuilder:
    """Accumulates rows of the two datasets."""

    def __init__(self, cfg: AstroConfig, ratings: Ratings, negatives: int) -> None:
        def vocab_id(names: tuple[str, ...], name: str, field: str) -> int:
            if name not in names:
                raise ValueError(f"MovieLens needs {name!r} in {field}={list(names)} of config {cfg.name!r}")
            return names.index(name)

        self.cfg, self.r, self.negatives = cfg, ratings, negatives
        self.play = vocab_id(cfg.behaviors, "play", "behaviors")
        self.like = vocab_id(cfg.behaviors, "like", "behaviors")
        self.skip = vocab_id(cfg.behaviors, "skip", "behaviors")
        self.scenario = vocab_id(cfg.scenarios, SCENARIO, "scenarios")
        self.catalogue = np.unique(ratings.item_ids)
        self.thresholds = np.array([TASK_MIN_RATING[t] for t in cfg.tasks])
        self.rows: dict[str, list[tuple[int, tuple[I64, I64, I64, I64], int, I64, F32]]] = {
            part: [] for part in ("train", "valid", "test")
        }

    def events(self, idx: I64) -> EventHistory:
        """The behaviour events of ratings ``idx`` (chronological), in the same order."""
        rating = self.r.ratings[idx]
        extra = (rating >= LIKE_MIN_RATING) | (rating <= SKIP_MAX_RATING)
        counts = 1 + extra.astype(np.int64)
        of = np.repeat(np.arange(idx.shape[0]), counts)  # the rating each event comes from
        first = np.r_[True, of[1:] != of[:-1]]  # the play event of each rating
        behavior = np.where(first, self.play, np.where(rating[of] >= LIKE_MIN_RATING, self.like, self.skip))
        return EventHistory(
            item_ids=self.r.item_ids[idx][of],
            behaviors=behavior.astype(np.int64),
            scenarios=np.full(of.shape[0], self.scenario, dtype=np.int64),
            timestamps=self.r.timestamps[idx][of],
        )

    def add(
        self, part: str, user: int, history: EventHistory, at: int, rated: I64, pool: I64, rng: np.random.Generator
    ) -> None:
        """One row: the events of ``history`` strictly before ``at``, candidates ``rated`` plus sampled negatives."""
        keep = int(np.searchsorted(history.timestamps, at, side="left"))  # history is chronological
        past = EventHistory(*(getattr(history, f)[:keep] for f in ("item_ids", "behaviors", "scenarios", "timestamps")))
        b = build_blocks(past, self.cfg, self.cfg.max_block_len)
        negs = rng.choice(pool, size=self.negatives, replace=False)
        cand = np.concatenate([self.r.item_ids[rated], negs])
        labels = np.zeros((cand.shape[0], self.thresholds.shape[0]), dtype=np.float32)
        labels[: rated.shape[0]] = self.r.ratings[rated][:, None] >= self.thresholds[None, :]
        perm = rng.permutation(cand.shape[0])
        self.rows[part].append(
            (user, (b.item_ids, b.behaviors, b.scenarios, b.timestamps), at, cand[perm], labels[perm])
        )

    def dataset(self, part: str) -> Dataset:
        rows = self.rows[part]
        nb, tb, t = self.cfg.n_blocks, self.cfg.max_block_len, self.cfg.n_tasks
        n = rows[0][3].shape[0] if rows else 0
        hist = np.stack([np.stack(r[1]) for r in rows], 1) if rows else np.zeros((4, 0, nb, tb), np.int64)
        return Dataset(
            hist_item_ids=hist[0],
            hist_behaviors=hist[1],
            hist_scenarios=hist[2],
            hist_timestamps=hist[3],
            request_scenario=np.full((len(rows), 1), self.scenario, dtype=np.int64),
            request_timestamp=np.array([[r[2]] for r in rows], dtype=np.int64).reshape(len(rows), 1),
            cand_item_ids=np.stack([r[3] for r in rows]) if rows else np.zeros((0, n), np.int64),
            labels=np.stack([r[4] for r in rows]) if rows else np.zeros((0, n, t), np.float32),
        )

    def users(self, part: str) -> I64:
        return np.array([r[0] for r in self.rows[part]], dtype=np.int64)


def summary(ds: Dataset, tasks: tuple[str, ...]) -> str:
    """One line: rows, candidates per row, history fill and the positive rate of each task."""
    filled = (ds.hist_item_ids != 0).sum(-1).mean(0) if len(ds) else np.zeros(0)
    rates = " ".join(f"{t}={ds.labels[..., i].mean():.3f}" for i, t in enumerate(tasks)) if len(ds) else "-"
    return (
        f"{len(ds)} rows x {ds.cand_item_ids.shape[1]} candidates, mean events per block "
        f"{[round(float(x), 1) for x in filled]}, positive rate {rates}"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.movielens"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", help="config preset whose blocks cut the histories")
    p.add_argument("--seed", type=int, default=0, help="seed of the negative sampling")
    p.add_argument("--held-out", type=int, default=10, help="last ratings of each user held out for evaluation")
    p.add_argument("--negatives", type=int, default=20, help="sampled unrated movies per row")
    a = p.parse_args()
    cfg = AstroConfig.from_name(a.preset)
    t0 = time.perf_counter()
    try:
        ratings = read_ratings()
    except MovieLensNotFound as e:
        raise SystemExit(str(e)) from None
    split = build_split(ratings, cfg, seed=a.seed, held_out=a.held_out, negatives=a.negatives)
    took = time.perf_counter() - t0
    dropped = int((~split.is_test & ~split.is_train).sum())
    print(
        f"ml-100k: {len(ratings)} ratings, {np.unique(ratings.user_ids).size} users, "
        f"{np.unique(ratings.item_ids).size} movies; {int(split.is_test.sum())} held out, "
        f"{int(split.is_train.sum())} for training, {dropped} boundary ties dropped"
    )
    print(f"train ({np.unique(split.train_users).size} users): {summary(split.train, cfg.tasks)}")
    print(f"valid ({np.unique(split.valid_users).size} users): {summary(split.valid, cfg.tasks)}")
    print(f"test  ({np.unique(split.test_users).size} users): {summary(split.test, cfg.tasks)}")
    print(f"built for preset {cfg.name!r} (Nb={cfg.n_blocks}, Tb={cfg.max_block_len}) in {took:.2f} s")


if __name__ == "__main__":
    main()
