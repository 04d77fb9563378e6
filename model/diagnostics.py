"""Where ASTRO gains and loses against the mean-pooled peer on MovieLens-100k, measured on the evaluation rows.

    python -m model.diagnostics --checkpoint checkpoints/small-movielens --out docs/ablations/diagnostics-movielens.json

The checkpoint's ASTRO, the mean-pooled peer (trained here by the same protocol and parameters,
from the checkpoint's ``metrics.json``, on the same rows) and popularity, scored on the same
evaluation rows and cut three ways:

* ``rated_only``: AUC over the candidates the user actually rated (the held-out movies), the
  sampled unrated ones left out: how well a model ranks *preference* among watched movies,
  apart from telling watched from unwatched;
* ``heavy`` / ``light``: GAUC over users with more / at most ``HEAVY_RATINGS`` training ratings
  (ASTRO small's play block keeps the newest 48; the pooled peer averages up to 1024 events).

Writes a JSON with every figure; ``--readme`` rewrites the README's ``<!-- diagnostics:movielens -->``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from contract.program import program_name
from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, load_metrics
from model.metrics import auc, gauc
from model.movielens import MovieLensSplit, load_movielens, read_ratings
from model.peers import train_peer
from model.readme import output_arguments, publish
from model.train import Splits, TrainParams, popularity_scores, predict

HEAVY_RATINGS = 150  # training ratings above which a user counts as heavy


def rated_mask(
    split: MovieLensSplit, item_ids: npt.NDArray[np.int64], user_ids: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """[U, N]: whether each evaluation candidate is one of its user's held-out (rated) movies."""
    held = {(int(u), int(i)) for u, i in zip(user_ids[split.is_test], item_ids[split.is_test], strict=True)}
    users = split.test_users
    return np.array(
        [[(int(users[r]), int(c)) in held for c in split.test.cand_item_ids[r]] for r in range(len(users))], dtype=bool
    )


def cuts(
    probs: npt.NDArray[Any],
    split: MovieLensSplit,
    rated: npt.NDArray[np.bool_],
    heavy: npt.NDArray[np.bool_],
    tasks: tuple[str, ...],
) -> dict[str, dict[str, float]]:
    labels = split.test.labels
    flat_p = probs[rated][None]  # [1, rated pairs, T]: every rated pair pooled into one "row"
    flat_y = labels[rated][None]
    return {
        "auc": auc(probs, labels, tasks),
        "rated_only_auc": auc(flat_p, flat_y, tasks),
        "heavy_gauc": gauc(probs[heavy], labels[heavy], tasks),
        "light_gauc": gauc(probs[~heavy], labels[~heavy], tasks),
    }


def run(checkpoint: Path) -> dict[str, Any]:
    model = load_checkpoint(checkpoint)
    m = load_metrics(checkpoint)
    cfg, seed = model.cfg, int(m["seed"])
    ratings = read_ratings()
    split = load_movielens(cfg, seed=seed)
    params = TrainParams(**m["params"])
    pooled = train_peer("pooled", cfg, params, "movielens", reference=Splits(split.train, split.valid, split.test))
    train_counts = np.bincount(ratings.user_ids[split.is_train], minlength=int(ratings.user_ids.max()) + 1)
    heavy = train_counts[split.test_users] > HEAVY_RATINGS
    rated = rated_mask(split, ratings.item_ids, ratings.user_ids)
    probs = {
        "ASTRO": predict(model, split.test),
        "mean-pooled peer": pooled.test_probs,
        "popularity": popularity_scores(split.train, split.test),
    }
    return {
        "checkpoint": str(checkpoint),
        "seed": seed,
        "heavy_ratings": HEAVY_RATINGS,
        "heavy_users": int(heavy.sum()),
        "users": int(heavy.size),
        "rated_pairs": int(rated.sum()),
        "models": {name: cuts(p, split, rated, heavy, cfg.tasks) for name, p in probs.items()},
        "tasks": list(cfg.tasks),
    }


def table(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    names = {
        "auc": "AUC (all candidates)",
        "rated_only_auc": "AUC among rated movies only",
        "heavy_gauc": f"GAUC, users with > {result['heavy_ratings']} training ratings ({result['heavy_users']})",
        "light_gauc": f"GAUC, the other {result['users'] - result['heavy_users']} users",
    }
    models = list(result["models"])
    lines = [
        "| cut | task | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for key, label in names.items():
        for t in tasks:
            lines.append(
                f"| {label} | {t} | " + " | ".join(f"{result['models'][m][key][t]:.4f}" for m in models) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.diagnostics"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT.parent / "small-movielens",
        help="ASTRO trained on MovieLens",
    )
    output_arguments(p, "diagnostics")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    publish(a, lambda: run(a.checkpoint), table, "diagnostics:movielens")


if __name__ == "__main__":
    main()
