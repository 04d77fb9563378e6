"""What each model's rows hold of a user's history (model.coverage): distinct events, overlaps counted once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.blocks import EventHistory, build_blocks
from contract.config import AstroConfig
from model import coverage
from model.peers import peer_config
from model.readme import section
from model.synthetic import RECENT_EVENTS, SyntheticWorld, WorldSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Any]:
    return coverage.coverage("synthetic")


def held(history: EventHistory, cfg: AstroConfig) -> set[tuple[int, ...]]:
    """The distinct events of one user's rows for ``cfg``."""
    b = build_blocks(history, cfg)
    return coverage.events(b.item_ids, b.timestamps, b.behaviors, per_rating=False)


def test_older_events_are_the_ones_the_world_drew_from_the_long_term_taste() -> None:
    """On histories drawn by the world itself (index 0 newest, the first RECENT_EVENTS from the short-term
    taste): the pooled peer's rows hold every event, ``older`` picks exactly those past the newest
    RECENT_EVENTS, and ASTRO's rows hold a subset."""
    world, rng = SyntheticWorld(WorldSpec(seed=3)), np.random.default_rng(3)
    small = AstroConfig.from_name("small")
    checked = 0
    while checked < 20:
        history, _, _ = world.user(rng)
        if len(history) <= RECENT_EVENTS:
            continue
        checked += 1
        drawn = list(
            zip(history.item_ids.tolist(), history.timestamps.tolist(), history.behaviors.tolist(), strict=True)
        )

        whole = held(history, peer_config("pooled", small))
        assert whole == set(drawn)
        assert coverage.older(whole) == set(drawn[RECENT_EVENTS:])
        assert held(history, small) <= whole


def test_events_in_several_astro_blocks_count_once(synthetic: dict[str, Any]) -> None:
    """The like+share and any-behaviour blocks hold mostly the same newest events: distinct < their sum."""
    astro = synthetic["models"]["astro"]
    per_block = [n for _, n in synthetic["astro_blocks"]]
    assert astro["events"] < sum(per_block)
    assert astro["events"] >= max(per_block)
    assert 0.0 < astro["older_events"] < synthetic["models"]["transformer"]["older_events"] <= 1.0


def test_committed_figures_are_this_code_s_and_the_readme_shows_them(synthetic: dict[str, Any]) -> None:
    result = json.loads((ROOT / "docs" / "ablations" / "coverage.json").read_text())
    assert result["synthetic"] == json.loads(json.dumps(synthetic))  # the JSON round trip turns tuples to lists
    assert section(ROOT / "README.md", "coverage").strip() == coverage.table(result)
