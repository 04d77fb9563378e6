"""What each model's input holds of a user's history, on the evaluation rows of both data sets.

    python -m model.coverage --out docs/ablations/coverage.json --readme README.md

ASTRO small keeps the newest 48 events of each of its blocks (plays; likes and shares, which on
MovieLens are likes alone; any behaviour), the single-stack peer the newest 144 events of any
behaviour, the mean-pooled peer up to 1024. Blocks overlap (the newest plays are mostly the
newest events), so what a model can know of a user is the *distinct* events its rows hold. Per
data set, over the evaluation rows, against the whole history (the pooled peer's rows: every event
of every synthetic user, and of every MovieLens user but the few with over 1024 events):

* ``events``: mean distinct events per user (MovieLens: distinct ratings, since one rating is a
  ``play`` and maybe a ``like`` or ``skip`` event at the same time);
* ``older_events``: on the synthetic world, the share of the events older than the newest
  ``RECENT_EVENTS`` that the rows hold: the world draws those from the user's long-term taste, the
  only taste its ``like`` label reads (``model.synthetic``), so a model that misses them cannot
  learn ``like`` beyond popularity.

No training: the rows are built exactly as training and evaluation build them (same seeds).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from contract.config import AstroConfig
from contract.program import program_name
from model.peers import peer_config
from model.readme import output_arguments, publish
from model.synthetic import I64, RECENT_EVENTS, Dataset
from model.train import DATASETS, TEST_USERS, load_data

MODELS = {"astro": "ASTRO small (3 blocks of 48)", "transformer": "single stack (144)", "pooled": "mean-pooled (1024)"}


def events(item_ids: I64, timestamps: I64, behaviors: I64, per_rating: bool) -> set[tuple[int, ...]]:
    """The distinct events of one row's history blocks ``[Nb, Tb]`` (padding left out): (item, time, behaviour),
    or (item, time) per rating."""
    valid = item_ids != 0
    item, ts, beh = item_ids[valid], timestamps[valid], behaviors[valid]
    if per_rating:
        return set(zip(item.tolist(), ts.tolist(), strict=True))
    return set(zip(item.tolist(), ts.tolist(), beh.tolist(), strict=True))


def row_events(ds: Dataset, row: int, per_rating: bool) -> set[tuple[int, ...]]:
    return events(ds.hist_item_ids[row], ds.hist_timestamps[row], ds.hist_behaviors[row], per_rating)


def older(whole: set[tuple[int, ...]]) -> set[tuple[int, ...]]:
    """The events past the newest RECENT_EVENTS (by time; the world's ages are distinct draws)."""
    by_time = sorted(whole, key=lambda e: -e[1])
    return set(by_time[RECENT_EVENTS:])


def coverage(data: str, preset: str = "small") -> dict[str, Any]:
    """Mean distinct events per evaluation row for each model's rows (and, synthetic, the older events' share)."""
    base = AstroConfig.from_name(preset)
    cfgs = {"astro": base, **{kind: peer_config(kind, base) for kind in ("transformer", "pooled")}}
    rows = {m: load_data(data, cfg, 0, TEST_USERS, 0).test for m, cfg in cfgs.items()}
    per_rating = data == "movielens"
    n = len(rows["pooled"])
    seen: dict[str, list[int]] = {m: [] for m in cfgs}
    older_seen: dict[str, list[float]] = {m: [] for m in cfgs}
    for r in range(n):
        whole = row_events(rows["pooled"], r, per_rating)
        old = older(whole) if not per_rating else set()
        for m, ds in rows.items():
            mine = row_events(ds, r, per_rating)
            if not mine <= whole:
                raise ValueError(f"{data} row {r}: {m}'s rows hold events the whole history lacks")
            seen[m].append(len(mine))
            if old:
                older_seen[m].append(len(mine & old) / len(old))
    out: dict[str, Any] = {"rows": n, "unit": "ratings" if per_rating else "events"}
    out["whole_history"] = float(np.mean(seen["pooled"]))
    filled = (rows["astro"].hist_item_ids != 0).sum(-1).mean(0)  # [Nb]: mean events per block
    out["astro_blocks"] = [[b.name, float(f)] for b, f in zip(base.blocks, filled, strict=True)]  # in block order
    out["models"] = {
        m: {
            "events": float(np.mean(seen[m])),
            **({"older_events": float(np.mean(older_seen[m]))} if not per_rating else {}),
        }
        for m in cfgs
    }
    return out


def table(result: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| data | rows | model | distinct history seen per row | older events seen (synthetic) | "
        "ASTRO's events per block |",
        "|---|---|---|---|---|---|",
    ]
    for data in (d for d in DATASETS if d in result):
        r = result[data]
        blocks = ", ".join(f"{name} {n:.1f}" for name, n in r["astro_blocks"])
        for m in MODELS:
            figures = r["models"][m]
            share = f"{figures['older_events']:.0%}" if "older_events" in figures else "–"
            lines.append(
                f"| {data} | {r['rows']} | {MODELS[m]} | {figures['events']:.1f} {r['unit']} of "
                f"{r['whole_history']:.1f} | {share} | {blocks if m == 'astro' else ''} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("model.coverage"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=",".join(DATASETS), help=f"comma-separated subset of {list(DATASETS)}")
    output_arguments(p, "coverage")
    a = p.parse_args()
    unknown = sorted(set(a.data.split(",")) - set(DATASETS))
    if unknown:
        p.error(f"--data: unknown {unknown}; choose from {list(DATASETS)}")
    publish(a, lambda: {d: coverage(d) for d in a.data.split(",")}, table, "coverage")


if __name__ == "__main__":
    main()
