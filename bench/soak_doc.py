"""``docs/reliability.md``'s soak table, written from the figures ``tests/test_soak.py`` records.

    ASTRO_SOAK_OUT=docs/bench/soak.json .venv/bin/python -m pytest tests/test_soak.py   # measure (20 s)
    python -m bench.soak_doc                        # rewrite the table from docs/bench/soak.json
    python -m bench.soak_doc --check                # exit 1 if the committed table differs

The soak runs 16 client threads against the real server for ``ASTRO_SOAK_SECONDS``; with
``ASTRO_SOAK_OUT`` set it writes what it printed as JSON, which this module renders between the
``<!-- soak -->`` markers, so no figure of the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from contract.program import program_name
from model.readme import section, write_section

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "bench" / "soak.json"
DOC = ROOT / "docs" / "reliability.md"
SECTION = "soak"


def table(f: dict[str, Any]) -> str:
    growth = f["rss_after_mb"] - f["rss_before_mb"]
    return "\n".join(
        [
            f"One run of {f['seconds']:.0f} s with {f['threads']} client threads ({f['measured']}, {f['machine']}):",
            "",
            "| requests | throughput | p50 / p99 latency | refused | errors | score mismatches | "
            "server RSS (tritonserver + stubs) |",
            "|---|---|---|---|---|---|---|",
            f"| {f['requests']} | {f['rps']:.0f} req/s | {f['p50_ms']:.1f} / {f['p99_ms']:.1f} ms | {f['refused']} | "
            f"{f['errors']} | {f['mismatches']} (every answer vs PyTorch, {f['atol']:g}) | "
            f"{f['rss_before_mb']:.0f} → {f['rss_after_mb']:.0f} MB ({growth:+.0f} MB; bound: "
            f"+{f['max_rss_growth_mb']:.0f} MB) |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=program_name("bench.soak_doc"), description=__doc__.split("\n\n")[0])
    p.add_argument("--figures", type=Path, default=FIGURES, help="the soak's JSON (default docs/bench/soak.json)")
    p.add_argument("--doc", type=Path, default=DOC, help="the document to rewrite (default docs/reliability.md)")
    p.add_argument("--check", action="store_true", help="only compare: exit 1 if the document's table differs")
    a = p.parse_args(argv)
    text = table(json.loads(a.figures.read_text()))
    if a.check:
        same = section(a.doc, SECTION) == text.strip()
        print("the soak table is the figures'" if same else f"{a.doc}'s soak table differs from {a.figures}'s")
        return 0 if same else 1
    write_section(a.doc, SECTION, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
