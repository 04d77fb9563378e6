"""Ranking metrics per task, as the ASTRO/Climber paper reports them, plus GAUC.

All functions take probabilities and 0/1 labels shaped ``[U, N, T]`` (user rows x
candidates x tasks) and the task names (``T`` of them), and return plain
``{task: float}`` dicts.

* ``auc``: ROC AUC over every (row, candidate) pair pooled, per task
  (``sklearn.metrics.roc_auc_score``); NaN when the task's labels hold one class only.
* ``logloss``: mean binary cross-entropy over every pair, per task
  (``sklearn.metrics.log_loss``, probabilities clipped by sklearn to (0, 1) exclusive).
* ``gauc``: group AUC, the per-user AUC averaged with each user weighted by their number
  of candidates. A user is every row unless ``groups`` (``[U]`` ids) says which rows
  belong to the same user; then their candidates are pooled. Users whose labels for the
  task hold a single class (all 0 or all 1) have no AUC and are skipped, both from the
  sum and from the weights; ``gauc_users`` counts the users kept. NaN when none is kept.
  The per-user AUC is the Mann-Whitney statistic on mid-ranks, vectorised over users: the
  same value as ``roc_auc_score`` on each user's candidates (ties count one half; the
  tests check the two agree), ~300x faster than a loop of sklearn calls (4 s -> 15 ms
  for 943 users x 30 candidates x 2 tasks).
* ``calibration``: per task, the expected calibration error (``ece``: predictions cut into
  ``CALIBRATION_BINS`` equal-width bins over [0, 1], the mean |mean prediction - positive rate|
  of the bins weighted by their pairs), the mean prediction and the positive rate.
  :func:`reliability_plot` draws the same bins (matplotlib, a PNG).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import log_loss, roc_auc_score

Array = npt.NDArray[Any]  # float or integer; converted to float64
CALIBRATION_BINS = 15  # equal-width probability bins of the ECE and the reliability plot


def auc(probs: Array, labels: Array, tasks: tuple[str, ...]) -> dict[str, float]:
    """Pooled ROC AUC per task."""
    p, y = _checked(probs, labels, tasks)
    return {t: _auc(y[..., i].ravel(), p[..., i].ravel()) for i, t in enumerate(tasks)}


def logloss(probs: Array, labels: Array, tasks: tuple[str, ...]) -> dict[str, float]:
    """Mean binary cross-entropy per task."""
    p, y = _checked(probs, labels, tasks)
    return {t: float(log_loss(y[..., i].ravel(), p[..., i].ravel(), labels=[0, 1])) for i, t in enumerate(tasks)}


def gauc(probs: Array, labels: Array, tasks: tuple[str, ...], groups: Array | None = None) -> dict[str, float]:
    """Per-user AUC, averaged weighted by the user's candidates; single-class users skipped."""
    return {t: v for t, (v, _) in _gauc(probs, labels, tasks, groups).items()}


def gauc_users(probs: Array, labels: Array, tasks: tuple[str, ...], groups: Array | None = None) -> dict[str, int]:
    """How many users each task's GAUC averages over (those with both label classes)."""
    return {t: n for t, (_, n) in _gauc(probs, labels, tasks, groups).items()}


def evaluate(
    probs: Array, labels: Array, tasks: tuple[str, ...], groups: Array | None = None
) -> dict[str, dict[str, float]]:
    """``{"auc", "logloss", "gauc", "ece", "mean_prediction", "label_rate"}``, each ``{task: value}``."""
    return {
        "auc": auc(probs, labels, tasks),
        "logloss": logloss(probs, labels, tasks),
        "gauc": gauc(probs, labels, tasks, groups),
        **calibration(probs, labels, tasks),
    }


def calibration(probs: Array, labels: Array, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``{"ece": {...}, "mean_prediction": {...}, "label_rate": {...}}``, each ``{task: value}``."""
    p, y = _checked(probs, labels, tasks)
    out: dict[str, dict[str, float]] = {"ece": {}, "mean_prediction": {}, "label_rate": {}}
    for i, t in enumerate(tasks):
        count, mean_p, rate = reliability_bins(p[..., i].ravel(), y[..., i].ravel())
        out["ece"][t] = float((count * np.abs(mean_p - rate)).sum() / max(count.sum(), 1.0))
        out["mean_prediction"][t] = float(p[..., i].mean()) if p.size else float("nan")
        out["label_rate"][t] = float(y[..., i].mean()) if y.size else float("nan")
    return out


def reliability_bins(
    p: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Flat predictions and labels -> per bin (``CALIBRATION_BINS`` over [0, 1]): pair count, mean
    prediction and positive rate (0 for an empty bin, whose count is 0)."""
    b = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)  # p = 1 joins the top bin
    count = np.bincount(b, minlength=CALIBRATION_BINS).astype(np.float64)
    safe = np.maximum(count, 1.0)
    mean_p = np.bincount(b, weights=p, minlength=CALIBRATION_BINS) / safe
    rate = np.bincount(b, weights=y, minlength=CALIBRATION_BINS) / safe
    return count, mean_p, rate


def reliability_plot(curves: dict[str, tuple[Array, Array]], tasks: tuple[str, ...], path: Path, title: str) -> None:
    """One panel per task: positive rate against mean prediction per bin, one line per model
    (``curves``: name -> (probs, labels) ``[U, N, T]``), the diagonal for reference. Writes a PNG."""
    import matplotlib  # plotting only: the metrics above need no matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4.2), squeeze=False)
    for i, (t, ax) in enumerate(zip(tasks, axes[0], strict=True)):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
        for name, (probs, labels) in curves.items():
            p, y = _checked(probs, labels, tasks)
            count, mean_p, rate = reliability_bins(p[..., i].ravel(), y[..., i].ravel())
            ece = calibration(p, y, tasks)["ece"][t]
            kept = count > 0
            ax.plot(mean_p[kept], rate[kept], marker="o", markersize=3, label=f"{name} (ECE {ece:.3f})")
        ax.set(title=t, xlabel="mean prediction in bin", ylabel="positive rate in bin", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gauc(probs: Array, labels: Array, tasks: tuple[str, ...], groups: Array | None) -> dict[str, tuple[float, int]]:
    p, y = _checked(probs, labels, tasks)
    n_rows, n_cand = p.shape[0], p.shape[1]
    if groups is None:
        user = np.arange(n_rows)
    else:
        g = np.asarray(groups)
        if g.shape != (n_rows,):
            raise ValueError(f"groups must have one id per row, shape ({n_rows},); got {g.shape}")
        user = np.unique(g, return_inverse=True)[1].reshape(-1)
    user = np.repeat(user, n_cand)  # one entry per (row, candidate)
    out = {}
    for i, t in enumerate(tasks):
        auc_u, n_u = _grouped_auc(user, p[..., i].ravel(), y[..., i].ravel())
        kept = ~np.isnan(auc_u)  # users with a single class have no AUC
        weight = float(n_u[kept].sum())
        out[t] = (float((auc_u[kept] * n_u[kept]).sum() / weight) if weight else float("nan"), int(kept.sum()))
    return out


def _grouped_auc(
    user: npt.NDArray[np.intp], p: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per user (ids ``0..U-1``): ROC AUC and candidate count. The AUC is the Mann-Whitney
    statistic on mid-ranks (a tie counts one half), equal to ``roc_auc_score`` per user but
    vectorised over users; NaN for a user with a single class."""
    if user.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((p, user))  # by user, then probability
    us, ps, ys = user[order], p[order], y[order]
    n_users = int(us[-1]) + 1
    count = np.bincount(us, minlength=n_users).astype(np.float64)
    first_of_user = np.concatenate([[0], np.cumsum(count)[:-1]])
    pos = np.arange(us.size) - first_of_user[us]  # 0-based rank within the user
    new_run = np.concatenate([[True], (us[1:] != us[:-1]) | (ps[1:] != ps[:-1])])  # runs of tied scores
    run = np.cumsum(new_run) - 1
    run_first = pos[new_run]
    run_len = np.bincount(run).astype(np.float64)
    mid_rank = run_first[run] + (run_len[run] - 1) / 2 + 1  # 1-based average rank of the tie run
    n_pos = np.bincount(us, weights=ys, minlength=n_users)
    rank_sum = np.bincount(us, weights=mid_rank * ys, minlength=n_users)
    n_neg = count - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc, count


def _auc(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64]) -> float:
    return float(roc_auc_score(y, p)) if y.size and y.min() != y.max() else float("nan")


def _checked(
    probs: Array, labels: Array, tasks: tuple[str, ...]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.ndim != 3 or p.shape != y.shape or p.shape[-1] != len(tasks):
        raise ValueError(
            f"probs and labels must both be [U, N, T={len(tasks)}] for tasks {list(tasks)}; got {p.shape} and {y.shape}"
        )
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not ((p >= 0.0) & (p <= 1.0)).all():
        raise ValueError("probs must be probabilities in [0, 1] (apply the sigmoid to logits first)")
    return p, y
