"""Train an ASTRO checkpoint with a validation split, and compare it with popularity on held-out rows.

    python -m model.train --preset small                      # -> checkpoints/small (the embedded default)
    python -m model.train --preset small --data movielens     # -> checkpoints/small-movielens
    python -m model.train --preset small --ablation no-bgf    # -> checkpoints/small-no-bgf

Rows are in the paper's SUMI format: one row per user holding many candidates, each
candidate seeing the whole history and only itself. Trains through the split path
(encoder once, scorer on all candidates: the same graphs that are served).

The protocol, the same for ASTRO and for every peer (:mod:`model.peers`):

* three disjoint sets of rows: training, validation and evaluation. On MovieLens the
  validation rows are each user's newest training-side rows (chronological, per user; see
  :mod:`model.movielens`); on the synthetic world, users of their own draw. Evaluation rows
  never reach training or model selection;
* after every epoch the validation rows are scored; the epoch with the lowest validation
  LogLoss (mean over tasks) is kept: training stops ``patience`` epochs after the best one
  (or at ``max_epochs``) and the best epoch's weights are restored;
* hyper-parameters (learning rate, weight decay, dropout, width) are options, chosen by
  comparing the runs' validation LogLoss (``metrics.json`` keeps the curve), never on the
  evaluation rows;
* optionally (``--refit``), once the epoch is chosen, the model is re-trained from the same
  initial weights on training + validation rows for that many epochs.

Writes a safetensors checkpoint with ``metrics.json`` (AUC, LogLoss, GAUC and calibration
per task of the model and of popularity on the evaluation rows, the validation curve and
the chosen epoch) and ``reliability.png`` (the calibration of both, per task).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

from contract.config import PRESETS, AstroConfig, BlockSpec, ConfigError, describe
from contract.program import program_name
from model.astro import AstroModel
from model.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from model.metrics import evaluate, logloss, reliability_plot
from model.synthetic import Dataset, SyntheticWorld, WorldSpec

CPU = torch.device("cpu")
RELIABILITY_PLOT = "reliability.png"


@torch.no_grad()
def predict(model: nn.Module, ds: Dataset, batch_size: int = 256) -> npt.NDArray[np.float32]:
    """Probabilities [U, N, T] of ``model(history, request, candidates)`` (ASTRO: the split path)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ds), batch_size):
        h, req, cand = ds.take(np.arange(start, min(start + batch_size, len(ds)))).trimmed().to_torch(device)
        out.append(torch.sigmoid(model(h, req, cand)).cpu().numpy())
    return np.concatenate(out)


def popularity_scores(train: Dataset, test: Dataset) -> npt.NDArray[np.float32]:
    """Baseline [U, N, T]: each item's positive rate per task in training, smoothed to the global rate."""
    ids = train.cand_item_ids.reshape(-1)
    labels = train.labels.reshape(-1, train.labels.shape[-1])
    uniq, inv = np.unique(ids, return_inverse=True)
    prior = labels.mean(0)
    pos = np.stack([np.bincount(inv, weights=labels[:, t], minlength=len(uniq)) for t in range(labels.shape[1])], 1)
    cnt = np.bincount(inv, minlength=len(uniq))[:, None]
    rate = (pos + 10 * prior) / (cnt + 10)  # 10 pseudo-observations of the global rate
    where = np.searchsorted(uniq, test.cand_item_ids.reshape(-1)).clip(0, len(uniq) - 1)
    known = uniq[where] == test.cand_item_ids.reshape(-1)
    scores = np.where(known[:, None], rate[where], prior[None, :])
    return scores.reshape(test.labels.shape)


ABLATIONS: dict[str, dict[str, bool]] = {
    "full": {},
    "no-bgf": {"bgf": False},  # the paper's -BGF: block outputs concatenated straight into the MLP
    "no-atl": {"relative_bias": False, "dynamic_temperature": False},  # -ATL: fixed sqrt(dh), no relative bias
}
DATASETS = ("synthetic", "movielens")
TRAIN_USERS, TEST_USERS = 4000, 1000  # synthetic users (one row each) for training and the held-out metrics
VALID_FRACTION = 8  # synthetic validation users: one per this many training users
# synthetic draws: training users seed + 1, evaluation seed + 2, validation seed + 4 (seed + 3 is the
# fresh users tests/test_checkpoint.py re-evaluates the embedded checkpoint on: no run ever sees them)
TRAIN_SEED_OFFSET, TEST_SEED_OFFSET, VALID_SEED_OFFSET = 1, 2, 4


@dataclass(frozen=True)
class Splits:
    """Three disjoint sets of rows: the model fits ``train``, selection reads ``valid``, metrics ``test``."""

    train: Dataset
    valid: Dataset
    test: Dataset


# the model's dropout in training (eval mode: no part of the served graphs), chosen with the weight decay on
# validation LogLoss on both data sets (docs/ablations/tuning): what `make train` and `make ablations` use
CHOSEN_DROPOUT = 0.1


@dataclass(frozen=True)
class TrainParams:
    """The optimisation side of a run (the model side is the :class:`AstroConfig`)."""

    max_epochs: int = 10  # passes over the training rows at most
    patience: int = 2  # epochs without a better validation LogLoss before stopping
    batch_size: int = 64  # rows per step (each a user with all its candidates)
    lr: float = 3e-3  # peak AdamW learning rate (one-cycle schedule over max_epochs)
    weight_decay: float = 0.05  # AdamW's decoupled weight decay, chosen on validation (docs/ablations/tuning)
    seed: int = 0  # data, split, negatives and init
    refit: bool = False  # after selection, re-train from the same init on training + validation rows
    # epochs before patience counts: on the synthetic world validation LogLoss stays flat for the first three,
    # and patience 2 stopped a run at epoch 3 with epoch 1 "best" (no committed run chose an epoch it changes)
    warmup_epochs: int = 4

    def __post_init__(self) -> None:
        bad = [
            f"{name}={getattr(self, name)} (need {need})"
            for name, ok, need in (
                ("max_epochs", self.max_epochs >= 1, ">= 1"),
                ("patience", self.patience >= 1, ">= 1"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("lr", self.lr > 0, "> 0"),
                ("weight_decay", self.weight_decay >= 0, ">= 0"),
                ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            )
            if not ok
        ]
        if bad:
            raise ValueError("training parameters out of range: " + ", ".join(bad))


def load_data(data: str, cfg: AstroConfig, n_train: int, n_test: int, seed: int) -> Splits:
    """Training, validation and evaluation rows in the SUMI row format: one row per user, many candidates."""
    if data == "movielens":
        from model.movielens import load_movielens  # reads a file of the recbole wheel; only this data needs it

        print(f"loading MovieLens-100k for preset {cfg.name!r} (seed {seed})", flush=True)
        split = load_movielens(cfg, seed=seed)
        return Splits(split.train, split.valid, split.test)
    world = SyntheticWorld(WorldSpec(seed=seed))
    n_valid = max(1, n_train // VALID_FRACTION)
    print(f"generating synthetic data: {n_train} train / {n_valid} validation / {n_test} held-out users", flush=True)
    return Splits(
        world.dataset(cfg, n_train, seed + TRAIN_SEED_OFFSET),
        world.dataset(cfg, n_valid, seed + VALID_SEED_OFFSET),
        world.dataset(cfg, n_test, seed + TEST_SEED_OFFSET),
    )


def mean_logloss(model: nn.Module, ds: Dataset, tasks: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """Validation criterion: the LogLoss per task of ``model`` on ``ds`` and its mean over tasks."""
    per_task = logloss(predict(model, ds), ds.labels, tasks)
    return float(np.mean(list(per_task.values()))), per_task


def _optimiser(
    model: nn.Module, params: TrainParams, n_rows: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, int]:
    """AdamW with a one-cycle schedule spanning ``params.max_epochs`` passes over ``n_rows``; steps per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    per_epoch = (n_rows + params.batch_size - 1) // params.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.lr, total_steps=params.max_epochs * per_epoch, pct_start=0.1
    )
    return opt, sched, per_epoch


def _train_epoch(
    model: nn.Module,
    ds: Dataset,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    batch_size: int,
    bar: tqdm[Any],
) -> float:
    """One pass over ``ds`` in a fresh random order; the mean training loss per row."""
    device = next(model.parameters()).device
    model.train()
    perm = rng.permutation(len(ds))
    total = 0.0
    for start in range(0, len(ds), batch_size):
        rows = ds.take(perm[start : start + batch_size])
        h, req, cand = rows.trimmed().to_torch(device)
        loss = F.binary_cross_entropy_with_logits(model(h, req, cand), torch.from_numpy(rows.labels).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        total += loss.item() * len(rows)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / len(ds)


def fit(model: nn.Module, splits: Splits, tasks: tuple[str, ...], params: TrainParams, desc: str) -> dict[str, Any]:
    """Train ``model`` in place on ``splits.train``; keep the epoch of lowest validation LogLoss.

    After each epoch the validation rows are scored; training stops ``params.patience`` epochs
    after the best one (counted from ``params.warmup_epochs`` at the earliest), and the best epoch's
    weights are loaded back into ``model``.
    Returns the record of the run: the validation curve, the chosen epoch, the time."""
    torch.manual_seed(params.seed)
    opt, sched, per_epoch = _optimiser(model, params, len(splits.train))
    rng = np.random.default_rng(params.seed)
    curve: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    t0 = time.perf_counter()
    with tqdm(total=params.max_epochs * per_epoch, desc=desc, unit="step") as bar:
        for epoch in range(1, params.max_epochs + 1):
            train_loss = _train_epoch(model, splits.train, opt, sched, rng, params.batch_size, bar)
            valid_loss, valid_per_task = mean_logloss(model, splits.valid, tasks)
            curve.append(
                {"epoch": epoch, "train_loss": train_loss, "valid_logloss": valid_per_task, "valid_mean": valid_loss}
            )
            bar.write(f"epoch {epoch}: train loss {train_loss:.4f}, validation LogLoss {valid_loss:.4f}")
            if best is None or valid_loss < best[0]:
                best = (valid_loss, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            elif epoch - max(best[1], params.warmup_epochs) >= params.patience:
                break
    assert best is not None  # max_epochs >= 1: at least one epoch ran
    model.load_state_dict(best[2])
    model.eval()
    return {
        "criterion": "validation LogLoss, mean over tasks",
        "curve": curve,
        "chosen_epoch": best[1],
        "epochs_run": len(curve),
        "valid_rows": len(splits.valid),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def refit(model: nn.Module, initial: dict[str, torch.Tensor], ds: Dataset, params: TrainParams, epochs: int) -> float:
    """Re-train ``model`` from its ``initial`` weights on ``ds`` for ``epochs`` epochs, the schedule and
    order of :func:`fit` (the selection already made: nothing is scored). Returns the seconds taken."""
    model.load_state_dict(initial)
    torch.manual_seed(params.seed)
    opt, sched, per_epoch = _optimiser(model, params, len(ds))
    rng = np.random.default_rng(params.seed)
    t0 = time.perf_counter()
    with tqdm(total=epochs * per_epoch, desc=f"refit on {len(ds)} rows, {epochs} epochs", unit="step") as bar:
        for _ in range(epochs):
            _train_epoch(model, ds, opt, sched, rng, params.batch_size, bar)
    model.eval()
    return round(time.perf_counter() - t0, 1)


def concat(a: Dataset, b: Dataset) -> Dataset:
    """The rows of ``a`` then those of ``b`` (cut for the same blocks)."""
    return Dataset(*(np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in fields(Dataset)))


def make_deterministic(seed: int) -> None:
    """The same command gives the same weights and metrics.json: deterministic kernels (on a GPU too,
    where cuBLAS then needs CUBLAS_WORKSPACE_CONFIG set before the first call)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass(frozen=True)
class Run:
    """A trained model with everything a report needs: the metrics and the evaluation-row predictions."""

    model: nn.Module
    metrics: dict[str, Any]
    test_probs: npt.NDArray[np.float32]  # [U, N, T] the model's, on the evaluation rows
    popularity_probs: npt.NDArray[np.float32]
    test_labels: npt.NDArray[np.float32]


def train_model(
    model: nn.Module,
    cfg: AstroConfig,
    splits: Splits,
    params: TrainParams,
    name: str,
    device: torch.device = CPU,
) -> Run:
    """Fit ``model`` by the protocol (see the module docstring) and score it and popularity on the evaluation rows."""
    model.to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = fit(model, splits, cfg.tasks, params, desc=f"train {name}")
    fitted = splits.train
    if params.refit:
        fitted = concat(splits.train, splits.valid)
        record["refit_seconds"] = refit(model, initial, fitted, params, record["chosen_epoch"])
    probs = predict(model, splits.test)
    pop = popularity_scores(fitted, splits.test)
    metrics = {
        "model": evaluate(probs, splits.test.labels, cfg.tasks),
        "popularity": evaluate(pop, splits.test.labels, cfg.tasks),
        "validation": record,
        "train_rows": len(splits.train),
        "fitted_rows": len(fitted),  # with refit, the training and validation rows
        "test_rows": len(splits.test),
        "candidates_per_row": int(splits.train.cand_item_ids.shape[1]),
        "params": asdict(params),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "torch": torch.__version__,
        "train_seconds": record["train_seconds"] + record.get("refit_seconds", 0.0),
    }
    return Run(model.cpu(), metrics, probs, pop, splits.test.labels)


def train(
    cfg: AstroConfig,
    params: TrainParams,
    data: str = "synthetic",
    ablation: str = "full",
    n_train: int = TRAIN_USERS,
    n_test: int = TEST_USERS,
    device: torch.device = CPU,
) -> Run:
    """Train one ASTRO model (``ablation`` of ``cfg``) on ``data`` by the protocol."""
    cfg = cfg.replace(**ABLATIONS[ablation])
    splits = load_data(data, cfg, n_train, n_test, params.seed)
    make_deterministic(params.seed)
    run = train_model(AstroModel(cfg), cfg, splits, params, f"{cfg.name} {ablation} on {data}", device)
    run.metrics.update(data=data, ablation=ablation, seed=params.seed, config=cfg.model_dump(mode="json"))
    return run


def save_run(run: Run, out: Path, title: str) -> None:
    """An ASTRO run as a checkpoint: weights, config, ``metrics.json`` and the reliability plot."""
    if not isinstance(run.model, AstroModel):
        raise TypeError(f"only ASTRO models are saved as checkpoints, not {type(run.model).__name__}")
    save_checkpoint(run.model, out, run.metrics)
    curves = {"ASTRO": (run.test_probs, run.test_labels), "popularity": (run.popularity_probs, run.test_labels)}
    chosen = run.metrics["validation"]["chosen_epoch"]
    reliability_plot(curves, run.model.cfg.tasks, out / RELIABILITY_PLOT, f"{title}, evaluation rows (epoch {chosen})")


def add_training_arguments(p: argparse.ArgumentParser, scope: str = "") -> None:
    """The flags of :class:`TrainParams` but the seed, and ``--dropout``, ``--threads``, ``--device``;
    ``scope`` ends each optimisation flag's help (``", every variant"``)."""
    d = TrainParams()
    p.add_argument("--epochs", type=int, default=d.max_epochs, help="passes over the training rows at most")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without a better validation LogLoss")
    p.add_argument(
        "--warmup-epochs", type=int, default=d.warmup_epochs, help="epochs before patience counts (no stop before)"
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"rows per step (each a user, all candidates){scope}"
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (one-cycle schedule){scope}")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay{scope}")
    p.add_argument(
        "--dropout", type=float, default=CHOSEN_DROPOUT, help=f"dropout of the model{scope} (chosen on validation)"
    )
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=d.refit,
        help=f"after choosing the epoch, re-train from the same init on training + validation rows{scope}",
    )
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", type=torch.device, default=CPU, help="torch device to train on, e.g. cuda")


def training_params(p: argparse.ArgumentParser, a: argparse.Namespace, seed: int = 0) -> TrainParams:
    """The :class:`TrainParams` of :func:`add_training_arguments`' flags; out of range: ``p.error`` naming each."""
    try:
        return TrainParams(
            a.epochs, a.patience, a.batch_size, a.lr, a.weight_decay, seed, a.refit, warmup_epochs=a.warmup_epochs
        )
    except ValueError as e:
        p.error(str(e))


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.train"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="config preset (default: small)")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="training data (default: synthetic)")
    p.add_argument(
        "--ablation", default="full", choices=sorted(ABLATIONS), help="the paper's ablations: no-bgf, no-atl"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint folder to write (default: checkpoints/<preset>, or checkpoints/<preset>-<data>[-<ablation>])",
    )
    p.add_argument("--train-users", type=int, default=TRAIN_USERS, help="synthetic training users (one row each)")
    p.add_argument("--test-users", type=int, default=TEST_USERS, help="held-out synthetic users for the metrics")
    p.add_argument("--d-model", type=int, default=None, help="embedding and model width (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the init")
    p.add_argument(
        "--blocks",
        type=parse_blocks,
        default=None,
        help="the preset's blocks replaced, for trying a layout (needs --out): name:behaviour+behaviour:max_len,... "
        "(no behaviours: every one), e.g. play:play:48,like:like+share:48,skip:skip:48",
    )
    add_training_arguments(p)
    a = p.parse_args()
    if a.blocks is not None and a.out is None:
        p.error("--blocks needs --out: the default folder is the preset's checkpoint, whose layout it would replace")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = AstroConfig.from_name(a.preset)
    overrides = {k: v for k, v in (("d_model", a.d_model), ("blocks", a.blocks)) if v is not None}
    try:
        cfg = cfg.replace(dropout=a.dropout, **overrides)
    except ConfigError as e:
        p.error(str(e))
    params = training_params(p, a, a.seed)
    out: Path = a.out or DEFAULT_CHECKPOINT.parent / default_name(a.preset, a.data, a.ablation)
    run = train(cfg, params, a.data, a.ablation, a.train_users, a.test_users, a.device)
    metrics = run.metrics
    save_run(run, out, f"{a.preset} on {a.data}")
    for t in cfg.tasks:
        m, pop = metrics["model"], metrics["popularity"]
        print(
            f"held-out {t}: AUC {m['auc'][t]:.4f} (popularity {pop['auc'][t]:.4f}), "
            f"LogLoss {m['logloss'][t]:.4f} ({pop['logloss'][t]:.4f}), GAUC {m['gauc'][t]:.4f} ({pop['gauc'][t]:.4f}), "
            f"ECE {m['ece'][t]:.4f} ({pop['ece'][t]:.4f})"
        )
    v = metrics["validation"]
    print(
        f"chose epoch {v['chosen_epoch']} of {v['epochs_run']} by validation LogLoss; "
        f"wrote {out}/ (model.safetensors, config.json, metrics.json, {RELIABILITY_PLOT}); "
        f"trained in {metrics['train_seconds']} s"
    )


def parse_blocks(text: str) -> tuple[BlockSpec, ...]:
    """``name:behaviour+behaviour:max_len,...`` -> the blocks (``name::48``: every behaviour)."""
    blocks = []
    for part in text.split(","):
        fields = part.split(":")
        if len(fields) != 3 or not fields[2].isdigit():
            raise argparse.ArgumentTypeError(f"block {part!r}: expected name:behaviour+behaviour:max_len")
        name, behaviors, max_len = fields
        try:
            blocks.append(
                BlockSpec(name=name, behaviors=tuple(b for b in behaviors.split("+") if b), max_len=int(max_len))
            )
        except ValidationError as e:
            raise argparse.ArgumentTypeError(f"block {part!r}: {describe(e)}") from None
    return tuple(blocks)


def default_name(preset: str, data: str, ablation: str) -> str:
    """checkpoints/<name>: the preset alone for the default run, never the name of another run."""
    parts = [preset, *([data] if data != "synthetic" else []), *([ablation] if ablation != "full" else [])]
    return "-".join(parts)


if __name__ == "__main__":
    main()
