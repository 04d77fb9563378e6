"""ASTRO against its ablations and its peers, over several seeds, by one training protocol.

    python -m model.ablations --data synthetic --seeds 0
    python -m model.ablations --data movielens --seeds 0,1,2 --out docs/ablations/movielens.json
    python -m model.ablations --data movielens --table-from docs/ablations/movielens.json --readme README.md

Variants: the full model; the paper's ablations ``no-bgf`` (block outputs concatenated
straight into the MLP) and ``no-atl`` (fixed sqrt(dh) temperature, no relative
position/time bias); the peers of :mod:`model.peers` (``pooled``: a mean-pooled-history
deep model, ``transformer``: one stack over the whole merged history); and popularity
(each item's smoothed positive rate in the training rows). Every trained variant goes
through :mod:`model.train`'s protocol with the same parameters: the same training,
validation and evaluation rows per seed, early stopping and the best epoch chosen by
validation LogLoss. Prints a Markdown table of the evaluation rows' AUC, LogLoss, GAUC and
ECE per task, mean ± std over seeds, and the goals ASTRO is held to; ``--out`` keeps every
run's metrics (JSON), from which ``--table-from`` rebuilds the table and ``--readme``
rewrites the README's section between ``<!-- ablations:DATA -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from contract.config import PRESETS, AstroConfig
from contract.program import program_name
from model.peers import PEERS, train_peer
from model.readme import write_section
from model.train import (
    ABLATIONS,
    DATASETS,
    TEST_USERS,
    TRAIN_USERS,
    TrainParams,
    add_training_arguments,
    load_data,
    save_run,
    train,
    training_params,
)

METRICS = ("auc", "logloss", "gauc", "ece")
VARIANTS = (*ABLATIONS, *PEERS)
LABELS = {
    "full": "ASTRO (ours)",
    "no-bgf": "−BGF",
    "no-atl": "−ATL",
    "pooled": "mean-pooled history + MLP (DLRM / YouTube-DNN style)",
    "transformer": "single-stack transformer, target attention (HSTU / SASRec style)",
    "popularity": "popularity",
}
# the goals on MovieLens-100k (mean of the seeds): figures of peers measured outside the project
GOALS = {
    "movielens": {
        "auc": {"play_complete": 0.876, "like": 0.870},  # a mean-pooled model, higher is better
        "logloss": {"play_complete": 0.391, "like": 0.338},  # a gradient-boosted model, lower is better
    }
}


def run(
    cfg: AstroConfig,
    data: str,
    seeds: list[int],
    variants: list[str],
    params: TrainParams,
    device: torch.device,
    save_first: Path | None = None,
    out: Path | None = None,
    users: tuple[int, int] = (TRAIN_USERS, TEST_USERS),
) -> dict[str, Any]:
    """{variant: [metrics of each seed]}, popularity included (from the first variant's training rows).
    With ``save_first``, the first seed's full model is saved there as a checkpoint (metrics, reliability
    plot); with ``out``, the results so far are written there after every training (JSON). ``users``:
    synthetic training and evaluation users."""
    result: dict[str, Any] = {
        "preset": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "data": data,
        "seeds": seeds,
        "params": {k: v for k, v in asdict(params).items() if k != "seed"},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "runs": {},
        "selection": {},
        "train_seconds": {},
    }
    for seed in seeds:
        p = replace(params, seed=seed)
        reference = load_data(data, cfg, *users, seed)
        for variant in variants:
            if variant in PEERS:
                trained = train_peer(variant, cfg, p, data, *users, device, reference)
            else:
                trained = train(cfg, p, data, variant, *users, device)
                if save_first is not None and variant == "full" and seed == seeds[0]:
                    save_run(trained, save_first, f"{cfg.name} on {data}")
            m, v = trained.metrics, trained.metrics["validation"]
            result["runs"].setdefault(variant, []).append(m["model"])
            result["selection"].setdefault(variant, []).append(
                {
                    "seed": seed,
                    "chosen_epoch": v["chosen_epoch"],
                    "epochs_run": v["epochs_run"],
                    "parameters": m["parameters"],
                }
            )
            result["train_seconds"].setdefault(variant, []).append(m["train_seconds"])
            if variant == variants[0]:
                result["runs"].setdefault("popularity", []).append(m["popularity"])
                result["selection"].setdefault("popularity", []).append({"seed": seed})
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def from_checkpoint(m: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``metrics.json`` (``python -m model.train``: one ASTRO run) as a result of :func:`run`."""
    variant, seed = m["ablation"], m["seed"]
    v = m["validation"]
    return {
        "preset": m["config"]["name"],
        "config": m["config"],
        "data": m["data"],
        "seeds": [seed],
        "params": m["params"],
        "device": m["device"],
        "torch": m["torch"],
        "runs": {variant: [m["model"]], "popularity": [m["popularity"]]},
        "selection": {
            variant: [
                {
                    "seed": seed,
                    "chosen_epoch": v["chosen_epoch"],
                    "epochs_run": v["epochs_run"],
                    "parameters": m["parameters"],
                }
            ],
            "popularity": [{"seed": seed}],
        },
        "train_seconds": {variant: [m["train_seconds"]]},
    }


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Results of several runs (the same data, config and parameters; other seeds or variants) as one;
    a checkpoint's ``metrics.json`` counts as one run. A (variant, seed) met twice is kept once."""
    results = [from_checkpoint(r) if "runs" not in r else r for r in results]
    # parameters as TrainParams spells them today (a field added since defaults to its value), seed aside
    results = [
        {**r, "params": {k: x for k, x in asdict(TrainParams(**r["params"])).items() if k != "seed"}} for r in results
    ]
    out = {**results[0], "runs": {}, "selection": {}, "train_seconds": {}, "seeds": []}
    seen: set[tuple[str, int]] = set()
    for r in results:
        if any(r[k] != results[0][k] for k in ("params", "config", "data")):
            raise SystemExit("--table-from: these results were run with other data, config or parameters")
        out["seeds"] = sorted(set(out["seeds"]) | set(r["seeds"]))
        for variant, runs in r["runs"].items():
            seconds = r["train_seconds"].get(variant, [None] * len(runs))
            for metrics, sel, sec in zip(runs, r["selection"][variant], seconds, strict=True):
                if (variant, sel["seed"]) in seen:
                    continue
                seen.add((variant, sel["seed"]))
                out["runs"].setdefault(variant, []).append(metrics)
                out["selection"].setdefault(variant, []).append(sel)
                if sec is not None:
                    out["train_seconds"].setdefault(variant, []).append(sec)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(result: dict[str, Any], tasks: tuple[str, ...]) -> str:
    """Markdown: one row per variant, mean ± std over seeds of each metric and task; then the goals."""
    names = {"auc": "AUC", "logloss": "LogLoss", "gauc": "GAUC", "ece": "ECE"}
    cols = [f"{names[m]} {t}" for m in METRICS for t in tasks]
    lines = ["| model | seeds | " + " | ".join(cols) + " | chosen epochs |", "|---|" + "---|" * (len(cols) + 2)]
    runs = result["runs"]
    order = [v for v in (*VARIANTS, "popularity") if v in runs] + sorted(set(runs) - {*VARIANTS, "popularity"})
    for variant in order:  # a fixed order: a JSON written with sorted keys gives the same table
        seeds = runs[variant]
        cells = []
        for m in METRICS:
            for t in tasks:
                if any(m not in s for s in seeds):  # results written before this metric was recorded
                    cells.append("–")
                    continue
                mean, std = mean_std([s[m][t] for s in seeds])
                cells.append(f"{mean:.4f} ± {std:.4f}")
        chosen = [c for c in result.get("selection", {}).get(variant, []) if "chosen_epoch" in c]
        epochs = ", ".join(str(c["chosen_epoch"]) for c in chosen) if chosen else "–"
        lines.append(f"| {LABELS.get(variant, variant)} | {len(seeds)} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join([*lines, "", *goal_lines(result, tasks)])


def goal_lines(result: dict[str, Any], tasks: tuple[str, ...]) -> list[str]:
    """One line per goal: ASTRO's mean against every other variant's and against the fixed targets."""
    runs = result["runs"]
    if "full" not in runs:
        return []
    n = len(runs["full"])
    out = [
        f"Goals (ASTRO = the full model, mean of its {n} seed{'s' * (n > 1)}; each peer: the mean of its own seeds):",
        "",
    ]
    for t in tasks:
        ours = mean_std([s["auc"][t] for s in runs["full"]])[0]
        for variant in [v for v in (*VARIANTS, "popularity") if v in runs and v != "full"]:
            seeds = runs[variant]
            theirs = mean_std([s["auc"][t] for s in seeds])[0]
            verdict = "met" if ours >= theirs else "**missed**"
            out.append(f"* AUC {t} ≥ {LABELS.get(variant, variant)}: {ours:.4f} vs {theirs:.4f}, {verdict}")
        for metric, targets in GOALS.get(result["data"], {}).items():
            ours_m = mean_std([s[metric][t] for s in runs["full"]])[0]
            ok = ours_m >= targets[t] if metric == "auc" else ours_m <= targets[t]
            sign = "≥" if metric == "auc" else "≤"
            name = "AUC" if metric == "auc" else "LogLoss"
            out.append(f"* {name} {t} {sign} {targets[t]}: {ours_m:.4f}, {'met' if ok else '**missed**'}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.ablations"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="config preset (default: small)")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="training data")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data split, negatives and init)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    add_training_arguments(p, ", every variant")
    p.add_argument("--out", type=Path, default=None, help="write every run's metrics here (JSON)")
    p.add_argument(
        "--table-from",
        type=Path,
        nargs="+",
        default=None,
        help="print the table of JSONs written by --out or checkpoints' metrics.json (several: pooled, then written "
        "to --out); no runs",
    )
    p.add_argument(
        "--save-first", type=Path, default=None, help="save the first seed's full model as a checkpoint here"
    )
    p.add_argument("--readme", type=Path, default=None, help="also rewrite this README's section for --data")
    a = p.parse_args()
    cfg = AstroConfig.from_name(a.preset)
    cfg = cfg.replace(dropout=a.dropout)
    if a.table_from:
        result = merge([json.loads(f.read_text()) for f in a.table_from])
        if a.out:
            a.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        text = table(result, cfg.tasks)
    else:
        variants = [v for v in a.variants.split(",") if v]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
        if a.threads:
            torch.set_num_threads(a.threads)
        seeds = [int(s) for s in a.seeds.split(",") if s]
        params = training_params(p, a)
        result = run(cfg, a.data, seeds, variants, params, a.device, a.save_first, a.out)
        text = table(result, cfg.tasks)
    if a.readme:
        write_section(a.readme, f"ablations:{a.data}", text)
    print(text)


if __name__ == "__main__":
    main()
