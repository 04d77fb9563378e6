"""Generated README sections: text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` rewritten from results files.

The figures in those sections come from the results JSON through the code that prints them
(``python -m model.ablations --readme``, ``python -m model.scaling --readme``, and
``python -m model.readme`` for the checkpoints' ``metrics.json``), never by hand.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def output_arguments(p: argparse.ArgumentParser, section: str) -> None:
    """``--out``, ``--table-from`` and ``--readme`` of a module that measures figures and writes a README table."""
    p.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    p.add_argument("--table-from", type=Path, default=None, help="print the table of a JSON written by --out")
    p.add_argument("--readme", type=Path, default=None, help=f"also rewrite this README's {section} section")


def publish(
    a: argparse.Namespace, measure: Callable[[], dict[str, Any]], table: Callable[[Any], str], section: str
) -> None:
    """The figures of ``--table-from``, or measured and written to ``--out``; their table printed, and written
    into the README's ``section`` with ``--readme``."""
    result = json.loads(a.table_from.read_text()) if a.table_from else measure()
    if a.out and not a.table_from:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if a.readme:
        write_section(a.readme, section, table(result))
    print(table(result))


def write_section(readme: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name -->`` and ``<!-- /name -->`` in ``readme`` with ``text``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = readme.read_text()
    if body.count(start) != 1 or body.count(end) != 1 or body.index(start) > body.index(end):
        raise ValueError(f"{readme} needs exactly one {start} ... {end} section to rewrite")
    head, rest = body.split(start, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")


def section(readme: Path, name: str) -> str:
    """The text of section ``name`` as :func:`write_section` left it."""
    body = readme.read_text()
    return body.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0].strip()


def checkpoint_table(metrics: dict[str, Any]) -> str:
    """A checkpoint's ``metrics.json`` as Markdown: the model and popularity on the evaluation rows."""
    tasks = list(metrics["config"]["tasks"])
    names = {"auc": "AUC", "logloss": "LogLoss", "gauc": "GAUC", "ece": "ECE"}
    cols = [f"{names[m]} {t}" for m in names for t in tasks]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for who, label in (("model", "ASTRO (this checkpoint)"), ("popularity", "popularity")):
        cells = [f"{metrics[who][m][t]:.4f}" for m in names for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    v, p = metrics["validation"], metrics["params"]
    rates = ", ".join(
        f"{t}: mean prediction {metrics['model']['mean_prediction'][t]:.3f} vs label rate "
        f"{metrics['model']['label_rate'][t]:.3f}"
        for t in tasks
    )
    lines += [
        "",
        f"{metrics['test_rows']} evaluation rows × {metrics['candidates_per_row']} candidates; "
        f"epoch {v['chosen_epoch']} of {v['epochs_run']} chosen by validation LogLoss on {v['valid_rows']} rows"
        + (f", then refit on {metrics['fitted_rows']} training + validation rows" if p.get("refit") else "")
        + f"; lr {p['lr']}, weight decay {p['weight_decay']}, batch {p['batch_size']}, dropout "
        f"{metrics['config']['dropout']}, seed {metrics['seed']}; {rates}.",
    ]
    return "\n".join(lines)


def tuning_table(runs: dict[str, dict[str, Any]]) -> str:
    """Hyper-parameter runs (name -> ``metrics.json``) compared on what selection may read: validation LogLoss."""
    lines = [
        "| run | blocks | dropout | weight decay | lr | validation LogLoss per epoch | best (epoch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in runs.items():
        v, p, c = m["validation"], m["params"], m["config"]
        blocks = ", ".join(f"{b['name']} {b['max_len']}" for b in c["blocks"])
        curve = " ".join(f"{e['valid_mean']:.4f}" for e in v["curve"])
        best = v["curve"][v["chosen_epoch"] - 1]["valid_mean"]
        lines.append(
            f"| {name} | {blocks} | {c['dropout']} | {p['weight_decay']} | {p['lr']} | {curve} | "
            f"{best:.4f} ({v['chosen_epoch']}) |"
        )
    return "\n".join(lines)


TUNING = "docs/ablations/tuning"  # one metrics.json per hyper-parameter run on MovieLens, named for the run


def main() -> None:
    """Rewrite the README's generated sections that read files: every ``<!-- checkpoint:NAME -->`` from
    ``checkpoints/NAME/metrics.json``, ``<!-- tuning -->`` from ``docs/ablations/tuning/*.json``."""
    root = Path(__file__).resolve().parent.parent
    readme = root / "README.md"
    body = readme.read_text()
    tuning = sorted((root / TUNING).glob("*.json"))
    if tuning and "<!-- tuning -->" in body:
        write_section(readme, "tuning", tuning_table({f.stem: json.loads(f.read_text()) for f in tuning}))
        print(f"rewrote the README's tuning section from {len(tuning)} runs in {TUNING}/")
    for path in sorted((root / "checkpoints").glob("*/metrics.json")):
        name = f"checkpoint:{path.parent.name}"
        if f"<!-- {name} -->" in body:
            write_section(readme, name, checkpoint_table(json.loads(path.read_text())))
            print(f"rewrote the README's {name} section from {path.relative_to(root)}")


if __name__ == "__main__":
    main()
