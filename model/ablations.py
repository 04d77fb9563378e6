"""The paper's ablations on our model: full ASTRO, -BGF and -ATL, with popularity, over several seeds.

    python -m model.ablations --data synthetic --seeds 0
    python -m model.ablations --data movielens --seeds 0,1,2 --out docs/ablations/movielens.json

Each variant is trained with the same budget (preset, epochs, batch size, learning rate,
rows) on the same data per seed: ``-BGF`` concatenates the block outputs straight into
the MLP, ``-ATL`` uses the fixed sqrt(dh) temperature and no relative position/time bias.
Popularity is each item's smoothed positive rate in the training rows. Prints a Markdown
table of held-out AUC, LogLoss and GAUC per task, mean ± std over seeds, and writes every
run's metrics to ``--out`` (JSON), from which the table is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from contract.config import PRESETS, AstroConfig
from contract.program import program_name
from model.train import ABLATIONS, DATASETS, TEST_USERS, TRAIN_USERS, train

METRICS = ("auc", "logloss", "gauc")
LABELS = {"full": "ASTRO (ours)", "no-bgf": "−BGF", "no-atl": "−ATL", "popularity": "popularity"}


def run(
    cfg: AstroConfig,
    data: str,
    seeds: list[int],
    variants: list[str],
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
) -> dict[str, Any]:
    """{variant: [metrics of each seed]}, popularity included (from the full runs' data)."""
    runs: dict[str, list[dict[str, dict[str, float]]]] = {v: [] for v in [*variants, "popularity"]}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for seed in seeds:
        for variant in variants:
            _, metrics = train(
                cfg, epochs, TRAIN_USERS, TEST_USERS, batch_size, lr, seed, data=data, ablation=variant, device=device
            )
            runs[variant].append(metrics["model"])
            seconds[variant].append(metrics["train_seconds"])
            if variant == variants[0]:
                runs["popularity"].append(metrics["popularity"])
    return {
        "preset": cfg.name,
        "data": data,
        "seeds": seeds,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "runs": runs,
        "train_seconds": seconds,
    }


def table(result: dict[str, Any], tasks: tuple[str, ...]) -> str:
    """Markdown: one row per variant, mean ± std over seeds of each metric and task."""
    cols = [f"{m.upper() if m != 'logloss' else 'LogLoss'} {t}" for m in METRICS for t in tasks]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for variant, seeds in result["runs"].items():
        cells = []
        for m in METRICS:
            for t in tasks:
                values = [s[m][t] for s in seeds]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.4f} ± {std:.4f}")
        lines.append(f"| {LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.ablations"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="config preset (default: small)")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="training data")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data split, negatives and init)")
    p.add_argument("--variants", default=",".join(ABLATIONS), help=f"comma-separated subset of {list(ABLATIONS)}")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training rows, every variant")
    p.add_argument("--batch-size", type=int, default=64, help="rows per step, every variant")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate, every variant")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="torch device, e.g. cuda")
    p.add_argument("--out", type=Path, default=None, help="write every run's metrics here (JSON)")
    p.add_argument("--table-from", type=Path, default=None, help="print the table of a JSON written by --out; no runs")
    a = p.parse_args()
    cfg = AstroConfig.from_name(a.preset)
    if a.table_from:
        print(table(json.loads(a.table_from.read_text()), cfg.tasks))
        return
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(ABLATIONS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(ABLATIONS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    result = run(cfg, a.data, seeds, variants, a.epochs, a.batch_size, a.lr, a.device)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(table(result, cfg.tasks))


if __name__ == "__main__":
    main()
