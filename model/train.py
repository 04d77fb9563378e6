"""Train an ASTRO checkpoint and compare it with popularity on held-out rows.

    python -m model.train --preset small                      # -> checkpoints/small (the embedded default)
    python -m model.train --preset small --data movielens     # -> checkpoints/small-movielens
    python -m model.train --preset small --ablation no-bgf    # -> checkpoints/small-no-bgf

Rows are in the paper's SUMI format: one row per user holding many candidates, each
candidate seeing the whole history and only itself. Trains through the split path
(encoder once, scorer on all candidates: the same graphs that are served), shows
progress, and writes a safetensors checkpoint with ``metrics.json``: AUC, LogLoss and
GAUC per task of the model and of a popularity baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from contract.config import PRESETS, AstroConfig
from contract.program import program_name
from model.astro import AstroModel, History, Request
from model.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from model.metrics import evaluate
from model.synthetic import Dataset, SyntheticWorld, WorldSpec

CPU = torch.device("cpu")


def batch_tensors(
    ds: Dataset, idx: npt.NDArray[np.int64], device: torch.device = CPU
) -> tuple[History, Request, torch.Tensor]:
    """Users ``idx`` as tensors on ``device``, Tb trimmed to the longest block in the batch (less padding)."""
    items = ds.hist_item_ids[idx]
    tb = max(1, int((items != 0).sum(-1).max()))
    h = History(
        *(
            torch.from_numpy(a[idx][:, :, :tb]).to(device)
            for a in (ds.hist_item_ids, ds.hist_behaviors, ds.hist_scenarios, ds.hist_timestamps)
        )
    )
    req = Request(
        torch.from_numpy(ds.request_scenario[idx]).to(device), torch.from_numpy(ds.request_timestamp[idx]).to(device)
    )
    return h, req, torch.from_numpy(ds.cand_item_ids[idx]).to(device)


@torch.no_grad()
def predict(model: AstroModel, ds: Dataset, batch_size: int = 256) -> npt.NDArray[np.float32]:
    """Probabilities [U, N, T] through the split path, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ds), batch_size):
        h, req, cand = batch_tensors(ds, np.arange(start, min(start + batch_size, len(ds))), device)
        out.append(torch.sigmoid(model.split(h, req, cand)).cpu().numpy())
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


def load_data(data: str, cfg: AstroConfig, n_train: int, n_test: int, seed: int) -> tuple[Dataset, Dataset]:
    """(training rows, held-out rows) in the SUMI row format: one row per user with many candidates."""
    if data == "movielens":
        from model.movielens import load_movielens  # reads a file of the recbole wheel; only this data needs it

        print(f"loading MovieLens-100k for preset {cfg.name!r} (seed {seed})", flush=True)
        return load_movielens(cfg, seed=seed)
    world = SyntheticWorld(WorldSpec(seed=seed))
    print(f"generating synthetic data: {n_train} train / {n_test} held-out users", flush=True)
    return world.dataset(cfg, n_train, seed + 1), world.dataset(cfg, n_test, seed + 2)


def train(
    cfg: AstroConfig,
    epochs: int,
    n_train: int,
    n_test: int,
    batch_size: int,
    lr: float,
    seed: int,
    data: str = "synthetic",
    ablation: str = "full",
    device: torch.device = CPU,
) -> tuple[AstroModel, dict[str, Any]]:
    """Train one model; metrics (AUC, LogLoss, GAUC per task) of it and of popularity on the held-out rows."""
    cfg = cfg.replace(**ABLATIONS[ablation])
    train_ds, test_ds = load_data(data, cfg, n_train, n_test, seed)
    torch.manual_seed(seed)
    # the same command gives the same weights and metrics.json: deterministic kernels (on a GPU too,
    # where cuBLAS then needs CUBLAS_WORKSPACE_CONFIG set before the first call)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    model = AstroModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_rows = len(train_ds)
    steps = epochs * ((n_rows + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with tqdm(total=steps, desc=f"train {cfg.name} {ablation} on {data}", unit="step") as bar:
        for _ in range(epochs):
            model.train()
            perm = rng.permutation(n_rows)
            for start in range(0, n_rows, batch_size):
                idx = perm[start : start + batch_size]
                h, req, cand = batch_tensors(train_ds, idx, device)
                labels = torch.from_numpy(train_ds.labels[idx]).to(device)
                loss = F.binary_cross_entropy_with_logits(model(h, req, cand), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    train_seconds = round(time.perf_counter() - t0, 1)
    model.eval()
    metrics = {
        "data": data,
        "ablation": ablation,
        "model": evaluate(predict(model, test_ds), test_ds.labels, cfg.tasks),
        "popularity": evaluate(popularity_scores(train_ds, test_ds), test_ds.labels, cfg.tasks),
        "train_rows": n_rows,
        "test_rows": len(test_ds),
        "candidates_per_row": int(train_ds.cand_item_ids.shape[1]),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": str(device),
        "torch": torch.__version__,
        "train_seconds": train_seconds,
    }
    return model.cpu(), metrics


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
    p.add_argument("--epochs", type=int, default=10, help="passes over the training rows")
    p.add_argument("--train-users", type=int, default=TRAIN_USERS, help="synthetic training users (one row each)")
    p.add_argument("--test-users", type=int, default=TEST_USERS, help="held-out synthetic users for the metrics")
    p.add_argument("--batch-size", type=int, default=64, help="rows per step (each a user with all its candidates)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (one-cycle schedule)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the init")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", type=torch.device, default=CPU, help="torch device to train on, e.g. cuda")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = AstroConfig.from_name(a.preset)
    out: Path = a.out or DEFAULT_CHECKPOINT.parent / default_name(a.preset, a.data, a.ablation)
    model, metrics = train(
        cfg,
        a.epochs,
        a.train_users,
        a.test_users,
        a.batch_size,
        a.lr,
        a.seed,
        data=a.data,
        ablation=a.ablation,
        device=a.device,
    )
    save_checkpoint(model, out, metrics)
    for t in cfg.tasks:
        m, pop = metrics["model"], metrics["popularity"]
        print(
            f"held-out {t}: AUC {m['auc'][t]:.4f} (popularity {pop['auc'][t]:.4f}), "
            f"LogLoss {m['logloss'][t]:.4f} ({pop['logloss'][t]:.4f}), GAUC {m['gauc'][t]:.4f} ({pop['gauc'][t]:.4f})"
        )
    print(f"wrote {out}/ (model.safetensors, config.json, metrics.json); trained in {metrics['train_seconds']} s")


def default_name(preset: str, data: str, ablation: str) -> str:
    """checkpoints/<name>: the preset alone for the default run, never the name of another run."""
    parts = [preset, *([data] if data != "synthetic" else []), *([ablation] if ablation != "full" else [])]
    return "-".join(parts)


if __name__ == "__main__":
    main()
