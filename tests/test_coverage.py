"""What each model's rows hold of a user's history (model.coverage): distinct events, overlaps counted once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model import coverage
from model.readme import section

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Any]:
    return coverage.coverage("synthetic")


def test_the_pooled_rows_hold_every_event_of_the_synthetic_world(synthetic: dict[str, Any]) -> None:
    pooled = synthetic["models"]["pooled"]
    assert pooled["events"] == synthetic["whole_history"]
    assert pooled["older_events"] == 1.0


def test_events_in_several_astro_blocks_count_once(synthetic: dict[str, Any]) -> None:
    """The like+share and any-behaviour blocks hold mostly the same newest events: distinct < their sum."""
    astro = synthetic["models"]["astro"]
    per_block = [n for _, n in synthetic["astro_blocks"]]
    assert astro["events"] < sum(per_block)
    assert astro["events"] >= max(per_block)
    assert 0.0 < astro["older_events"] < synthetic["models"]["transformer"]["older_events"] <= 1.0


def test_committed_readme_coverage_section_is_the_committed_figures() -> None:
    result = json.loads((ROOT / "docs" / "ablations" / "coverage.json").read_text())
    assert section(ROOT / "README.md", "coverage").strip() == coverage.table(result)
