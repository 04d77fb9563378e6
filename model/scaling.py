"""Scaling: quality against training compute and parameters, ASTRO against one stack over the whole history.

    python -m model.scaling                 # the full grid: 4 sizes x 2 models x 3 seeds x 2 datasets -> docs/scaling/
    python -m model.scaling --quick         # 2 tiny sizes, 1 seed, small synthetic data: a minute (the test runs it)
    python -m model.scaling --data movielens --seeds 0 --sizes xs,s,m,l   # a reduced run
    python -m model.scaling --table-from a/scaling.json b/scaling.json --out docs/scaling   # runs pooled

The paper's claim is a better scaling curve: quality gained per unit of compute as the model
grows. Each point is one model at one size, trained by :mod:`model.train`'s protocol (validation
rows, early stopping on validation LogLoss, best epoch restored) and scored on the evaluation rows:

* sizes grow depth (layers), width (``d_model``) and history length together (:data:`SIZES`);
* ``astro``: the preset's blocks, each cut to the size's history length;
* ``transformer``: the single-stack peer of :mod:`model.peers` over one block of every behaviour
  as long as all of ASTRO's blocks together (the same number of history tokens);
* training FLOPs per sample: forward plus backward of one training step, counted by
  ``torch.utils.flop_counter`` on ``FLOP_ROWS`` training rows and divided by them (a row is one
  user with all its candidates); parameters: without the item-embedding table (whose size is the
  id hash space, not the model), with it in the JSON too.

Per model and dataset a line ``metric = a + b * log10(x)`` is fitted to the seed means; ``b`` is
the slope (LogLoss: negative is better; AUC: positive). Writes ``scaling.json`` (every point),
``scaling.md`` (table, slopes and what they show) and ``scaling.png`` under ``--out``.
Runs ``--jobs`` trainings at once, each on one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.config import PRESETS, AstroConfig, BlockSpec
from contract.program import program_name
from model.astro import AstroModel
from model.peers import build_peer, peer_config
from model.readme import write_section
from model.synthetic import Dataset
from model.train import DATASETS, TrainParams, load_data, make_deterministic, train_model

MODELS = ("astro", "transformer")
LABELS = {"astro": "ASTRO (multi-scale blocks)", "transformer": "single stack over the whole history"}
CHANCE_AUC = 0.55  # below this best AUC a dataset's points are read as "nothing learned"
FLOP_ROWS = 64  # training rows whose forward + backward FLOPs are counted per point
OUT = Path(__file__).resolve().parent.parent / "docs" / "scaling"


@dataclass(frozen=True)
class Size:
    name: str
    n_layers: int
    d_model: int
    history: int  # events per ASTRO block; the single stack sees n_blocks times as many


SIZES = (
    Size("xs", 1, 16, 8),
    Size("s", 1, 32, 16),
    Size("m", 2, 32, 24),
    Size("l", 2, 48, 32),
    Size("xl", 2, 64, 48),  # ASTRO small's width, depth and blocks
)
QUICK_SIZES = (Size("q1", 1, 8, 4), Size("q2", 1, 16, 8))


@dataclass(frozen=True)
class Plan:
    """What one run of the module trains."""

    preset: str
    datasets: tuple[str, ...]
    sizes: tuple[Size, ...]
    seeds: tuple[int, ...]
    params: dict[str, TrainParams]  # per dataset
    synthetic_users: tuple[int, int]  # (training, evaluation) users of the synthetic world

    def describe(self) -> str:
        """Each dataset's epoch budget, in words."""
        return "; ".join(
            f"{data}: at most {p.max_epochs} epochs (patience {p.patience} after {p.warmup_epochs} warm-up, "
            f"weight decay {p.weight_decay})"
            for data, p in self.params.items()
            if data in self.datasets
        )


# the default run: 4 sizes x 2 models x 3 seeds x 2 datasets (xl on request: --sizes). MovieLens: at most 3
# epochs, what fits the hour on 2 cores. The synthetic world needs more users and epochs to learn anything
# (its validation LogLoss is flat for the first three epochs; 1000 users and 3 epochs left every point at
# chance): the embedded checkpoint's 4000 training and 1000 evaluation users, its warm-up and patience.
FULL = Plan(
    "small",
    DATASETS,
    SIZES[:4],
    (0, 1, 2),
    {
        "movielens": TrainParams(max_epochs=3, patience=1, warmup_epochs=0, weight_decay=0.01),
        "synthetic": TrainParams(max_epochs=10, patience=2, warmup_epochs=4, weight_decay=0.01),
    },
    (4000, 1000),
)
QUICK = Plan(
    "small",
    ("synthetic",),
    QUICK_SIZES,
    (0,),
    {data: TrainParams(max_epochs=1, batch_size=32) for data in DATASETS},
    (96, 48),
)


def size_config(model: str, base: AstroConfig, size: Size) -> AstroConfig:
    """``base`` grown or shrunk to ``size``, as ``model`` (ASTRO's blocks, or one stack as long as all of them)."""
    heads = 2 if size.d_model < 32 else 4
    blocks = tuple(BlockSpec(name=b.name, behaviors=b.behaviors, max_len=size.history) for b in base.blocks)
    astro = base.replace(
        name=f"{base.name}-{size.name}", d_model=size.d_model, n_heads=heads, n_layers=size.n_layers, blocks=blocks
    )
    if model == "astro":
        return astro
    return peer_config("transformer", astro, history=size.history * base.n_blocks)


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters without the item-embedding table (sized by the id hash space, not by the model)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("item_emb."))


def train_flops_per_row(model: nn.Module, ds: Dataset, seed: int) -> float:
    """Forward + backward FLOPs of one training step, per training row, counted by torch on FLOP_ROWS rows."""
    from torch.utils.flop_counter import FlopCounterMode

    idx = np.random.default_rng(seed).choice(len(ds), size=min(FLOP_ROWS, len(ds)), replace=False)
    rows = ds.take(np.sort(idx))
    h, req, cand = rows.trimmed().to_torch()
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss = F.binary_cross_entropy_with_logits(model(h, req, cand), torch.from_numpy(rows.labels))
        loss.backward()  # type: ignore[no-untyped-call]
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) / len(idx)


def run_point(job: tuple[str, str, str, Size, int, TrainParams, tuple[int, int]]) -> dict[str, Any]:
    """One (dataset, model, size, seed): train by the protocol, count FLOPs and parameters, score."""
    preset, data, model_kind, size, seed, params, users = job
    torch.set_num_threads(1)
    cfg = size_config(model_kind, AstroConfig.from_name(preset), size)
    splits = load_data(data, cfg, users[0], users[1], seed)
    make_deterministic(seed)
    model = AstroModel(cfg) if model_kind == "astro" else build_peer("transformer", cfg)
    flops = train_flops_per_row(model, splits.train, seed)
    t0 = time.perf_counter()
    p = TrainParams(**{**asdict(params), "seed": seed})
    run = train_model(model, cfg, splits, p, f"{model_kind} {size.name} on {data} seed {seed}")
    m = run.metrics["model"]
    return {
        "data": data,
        "model": model_kind,
        "size": asdict(size),
        "seed": seed,
        "train_flops_per_row": flops,
        "parameters": sum(q.numel() for q in run.model.parameters()),
        "non_embedding_parameters": non_embedding_parameters(run.model),
        "history_tokens": cfg.n_blocks * cfg.max_block_len,
        "auc": float(np.mean(list(m["auc"].values()))),
        "logloss": float(np.mean(list(m["logloss"].values()))),
        "per_task": {k: m[k] for k in ("auc", "logloss")},
        "chosen_epoch": run.metrics["validation"]["chosen_epoch"],
        "train_rows": run.metrics["train_rows"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_plan(
    plan: Plan, jobs: int, on_point: Callable[[list[dict[str, Any]]], object] | None = None
) -> list[dict[str, Any]]:
    """Every point of ``plan``, smallest sizes first (a run cut short still spans both models and datasets).
    With one job, ``on_point`` sees the points so far after each one."""
    work = [
        (plan.preset, data, model, size, seed, plan.params[data], plan.synthetic_users)
        for size in plan.sizes
        for data in plan.datasets
        for seed in plan.seeds
        for model in MODELS
    ]
    if jobs <= 1:
        points: list[dict[str, Any]] = []
        for w in work:
            points.append(run_point(w))
            if on_point is not None:
                on_point(points)
        return points
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_point, work))


def aggregate(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed means and standard deviations per (dataset, model, size), in size order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["data"], p["model"], p["size"]["name"]), []).append(p)
    rows = []
    for (data, model, size), ps in groups.items():
        row: dict[str, Any] = {"data": data, "model": model, "size": size, "seeds": len(ps)}
        for k in ("train_flops_per_row", "non_embedding_parameters", "parameters"):
            row[k] = statistics.fmean(p[k] for p in ps)
        for k in ("auc", "logloss"):
            values = [p[k] for p in ps]
            row[k] = statistics.fmean(values)
            row[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["size_spec"] = ps[0]["size"]
        rows.append(row)
    return rows


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the points of several runs (e.g. seeds run apart); a point may come from one run only."""
    if len(results) == 1:
        return results[0]
    points = [p for r in results for p in r["points"]]
    keys = [(p["data"], p["model"], p["size"]["name"], p["seed"]) for p in points]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"points {repeated} come from more than one run; pool disjoint runs")
    rows = aggregate(points)
    note = f"{len(results)} runs pooled: " + " + ".join(f"({r['note']})" for r in results)
    return {"note": note, "plan": [r["plan"] for r in results], "points": points, "rows": rows, "slopes": slopes(rows)}


def slopes(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{data: {model: {"<metric>_per_decade_<x>": b}}}: least-squares b of metric = a + b log10(x)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for data in sorted({r["data"] for r in rows}):
        for model in MODELS:
            rs = [r for r in rows if r["data"] == data and r["model"] == model]
            if len(rs) < 2:
                continue
            fit = {}
            for x in ("train_flops_per_row", "non_embedding_parameters"):
                lx = np.log10([r[x] for r in rs])
                for metric in ("logloss", "auc"):
                    fit[f"{metric}_per_decade_{x}"] = float(np.polyfit(lx, [r[metric] for r in rs], 1)[0])
            out.setdefault(data, {})[model] = fit
    return out


def statement(rows: list[dict[str, Any]], fits: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """What the numbers show, in words, computed from them."""
    lines = []
    for data, per_model in fits.items():
        if set(per_model) != set(MODELS):
            continue
        a, t = per_model["astro"], per_model["transformer"]
        key = "logloss_per_decade_train_flops_per_row"
        steeper = "ASTRO" if a[key] < t[key] else "the single stack"
        best = {m: min(r["logloss"] for r in rows if r["data"] == data and r["model"] == m) for m in MODELS}
        top_auc = max(r["auc"] for r in rows if r["data"] == data)
        if top_auc < CHANCE_AUC:
            lines.append(
                f"* {data}: no point beats chance (best AUC {top_auc:.4f} < {CHANCE_AUC}): at this data size and "
                "epoch budget neither model learned, so its slopes are noise and show nothing about scaling."
            )
            continue
        lines.append(
            f"* {data}: per decade of training FLOPs, LogLoss changes by {a[key]:+.4f} for ASTRO and "
            f"{t[key]:+.4f} for the single stack: {steeper} has the steeper (better) curve over these sizes. "
            f"Best LogLoss reached: ASTRO {best['astro']:.4f}, single stack {best['transformer']:.4f}. "
            f"AUC per decade: ASTRO {a['auc_per_decade_train_flops_per_row']:+.4f}, "
            f"single stack {t['auc_per_decade_train_flops_per_row']:+.4f}.{equal_compute(rows, data)}"
        )
    return lines


def equal_compute(rows: list[dict[str, Any]], data: str) -> str:
    """ASTRO against the single stack at the same training FLOPs: the single stack's fitted LogLoss line read
    at the FLOPs of ASTRO's largest size that lies inside the single stack's range (never extrapolated)."""
    x = "train_flops_per_row"
    ts = [r for r in rows if r["data"] == data and r["model"] == "transformer"]
    if len(ts) < 2:
        return ""
    lo, hi = min(t[x] for t in ts), max(t[x] for t in ts)
    inside = [r for r in rows if r["data"] == data and r["model"] == "astro" and lo <= r[x] <= hi]
    if not inside:
        return ""
    a = max(inside, key=lambda r: r[x])
    fit = np.polyfit(np.log10([t[x] for t in ts]), [t["logloss"] for t in ts], 1)
    line = float(np.polyval(fit, np.log10(a[x])))
    return (
        f" At equal compute, ASTRO {a['size']} ({a[x] / 1e9:.4f} training GFLOPs per row) reaches LogLoss "
        f"{a['logloss']:.4f}, the single stack's fitted line {line:.4f} there."
    )


def markdown(result: dict[str, Any]) -> str:
    rows, fits = result["rows"], result["slopes"]
    out = [
        "# Scaling: ASTRO against a single stack over the whole history",
        "",
        "Generated by `python -m model.scaling` from `scaling.json`; do not edit by hand.",
        "",
        f"Run: {result['note']}",
        "",
        "| data | model | size (layers, d, history/block) | train GFLOPs / row | non-emb. params | "
        "AUC (mean of tasks) | LogLoss (mean of tasks) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["size_spec"]
        out.append(
            f"| {r['data']} | {LABELS[r['model']]} | {r['size']} ({s['n_layers']}, {s['d_model']}, {s['history']}) | "
            f"{r['train_flops_per_row'] / 1e9:.4f} | {r['non_embedding_parameters']:,.0f} | "
            f"{r['auc']:.4f} ± {r['auc_std']:.4f} | {r['logloss']:.4f} ± {r['logloss_std']:.4f} | {r['seeds']} |"
        )
    out += ["", "Fitted slopes, metric = a + b · log10(x) over the sizes (seed means):", ""]
    out += ["| data | model | b LogLoss / FLOPs | b AUC / FLOPs | b LogLoss / params | b AUC / params |"]
    out += ["|---|---|---|---|---|---|"]
    for data, per_model in fits.items():
        for model, f in per_model.items():
            out.append(
                f"| {data} | {LABELS[model]} | {f['logloss_per_decade_train_flops_per_row']:+.4f} | "
                f"{f['auc_per_decade_train_flops_per_row']:+.4f} | "
                f"{f['logloss_per_decade_non_embedding_parameters']:+.4f} | "
                f"{f['auc_per_decade_non_embedding_parameters']:+.4f} |"
            )
    return "\n".join([*out, "", "What it shows:", "", *statement(rows, fits), ""])


def summary(result: dict[str, Any]) -> str:
    """The README's part: how the run was reduced, the slopes and what they show."""
    md = markdown(result)
    slopes_part = md.split("Fitted slopes", 1)[1]
    return f"Run: {result['note']}\n\nFitted slopes{slopes_part}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    datasets = sorted({r["data"] for r in rows})
    panels = [
        ("train_flops_per_row", "logloss"),
        ("train_flops_per_row", "auc"),
        ("non_embedding_parameters", "logloss"),
        ("non_embedding_parameters", "auc"),
    ]
    fig, axes = plt.subplots(len(datasets), len(panels), figsize=(4 * len(panels), 3.4 * len(datasets)), squeeze=False)
    for i, data in enumerate(datasets):
        for j, (x, y) in enumerate(panels):
            ax = axes[i][j]
            for model in MODELS:
                rs = [r for r in rows if r["data"] == data and r["model"] == model]
                if not rs:
                    continue
                ax.errorbar(
                    [r[x] for r in rs],
                    [r[y] for r in rs],
                    yerr=[r[f"{y}_std"] for r in rs],
                    marker="o",
                    label=LABELS[model],
                )
            ax.set_xscale("log")
            ax.set(
                title=f"{data}",
                xlabel="training FLOPs per row" if x == "train_flops_per_row" else "non-embedding parameters",
                ylabel="AUC" if y == "auc" else "LogLoss",
            )
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "scaling.md").write_text(markdown(result))
    plot(result, out / "scaling.png")


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.scaling"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 tiny sizes, 1 seed, small synthetic data (about a minute)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="base preset whose blocks are scaled")
    p.add_argument("--data", default=None, help=f"comma-separated subset of {list(DATASETS)}")
    p.add_argument("--sizes", default=None, help=f"comma-separated subset of {[s.name for s in SIZES]}")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (full run: 0,1,2)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="max epochs per point, every data set (full run: MovieLens 3, synthetic 10)",
    )
    p.add_argument("--jobs", type=int, default=None, help="trainings at once, one thread each (2; --quick: 1)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {OUT}; --quick: none unless given)")
    p.add_argument(
        "--table-from",
        type=Path,
        nargs="+",
        default=None,
        help="rebuild the outputs from scaling.json files (several: their points pooled); no runs",
    )
    p.add_argument("--readme", type=Path, default=None, help="also rewrite this README's <!-- scaling --> section")
    a = p.parse_args()
    plan = QUICK if a.quick else FULL
    sizes = {s.name: s for s in plan.sizes}
    try:
        plan = Plan(
            a.preset or plan.preset,
            tuple(a.data.split(",")) if a.data else plan.datasets,
            tuple(sizes[s] for s in a.sizes.split(",")) if a.sizes else plan.sizes,
            tuple(int(s) for s in a.seeds.split(",")) if a.seeds else plan.seeds,
            {
                data: replace(params, max_epochs=a.epochs) if a.epochs else params
                for data, params in plan.params.items()
            },
            plan.synthetic_users,
        )
    except KeyError as e:
        p.error(f"--sizes: unknown size {e}; choose from {list(sizes)}")
    unknown = sorted(set(plan.datasets) - set(DATASETS))
    if unknown:
        p.error(f"--data: unknown {unknown}; choose from {list(DATASETS)}")
    jobs = a.jobs or (1 if a.quick else 2)
    if a.table_from:
        if len(a.table_from) > 1 and a.out is None:
            p.error("--table-from with several files needs --out: the pooled result would replace the first part's")
        try:
            result = pool([json.loads(path.read_text()) for path in a.table_from])
        except ValueError as e:
            p.error(f"--table-from: {e}")
        write(result, a.out or a.table_from[0].parent)
        if a.readme:
            write_section(a.readme, "scaling", summary(result))
        print(markdown(result))
        return
    t0 = time.perf_counter()
    out = a.out or (None if a.quick else OUT)
    kind = "quick" if a.quick else "reduced" if plan != FULL else "full"

    def report(points: list[dict[str, Any]], done: bool) -> dict[str, Any]:
        rows = aggregate(points)
        note = (
            f"{kind} run{'' if done else ' (partial: ' + str(len(points)) + ' points so far)'}: data "
            f"{list(plan.datasets)}, sizes {[s.name for s in plan.sizes]}, seeds {list(plan.seeds)}, "
            f"{plan.describe()}, synthetic users "
            f"{plan.synthetic_users[0]} train / {plan.synthetic_users[1]} evaluation, {jobs} jobs x 1 thread, "
            f"{time.perf_counter() - t0:.0f} s"
        )
        result = {"note": note, "plan": asdict(plan), "points": points, "rows": rows, "slopes": slopes(rows)}
        if out is not None:
            write(result, out)
            if a.readme:
                write_section(a.readme, "scaling", summary(result))
        return result

    result = report(run_plan(plan, jobs, lambda points: report(points, done=False)), done=True)
    print(markdown(result))


if __name__ == "__main__":
    main()
