"""`make scaling --quick` runs end to end; FLOPs, parameters and slopes are what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contract.config import AstroConfig
from model.astro import AstroModel
from model.peers import build_peer
from model.scaling import (
    SIZES,
    equal_compute,
    non_embedding_parameters,
    pool,
    size_config,
    slopes,
    train_flops_per_row,
)
from model.train import load_data

ROOT = Path(__file__).resolve().parent.parent
SMALL = AstroConfig.from_name("small")


def test_quick_scaling_run_writes_table_plot_and_slopes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "model.scaling", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert len(result["points"]) == 4 and {p["model"] for p in result["points"]} == {"astro", "transformer"}
    for p in result["points"]:
        assert p["train_flops_per_row"] > 0 and 0.0 <= p["auc"] <= 1.0 and p["logloss"] > 0
    assert set(result["slopes"]["synthetic"]) == {"astro", "transformer"}
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "scaling.md").read_text()
    assert "What it shows" in md and "quick run" in md
    # 96 synthetic users for one epoch learn nothing: the statement must say so rather than read the slopes
    best = max(p["auc"] for p in result["points"])
    assert ("no point beats chance" in md) == (best < 0.55) and ("per decade of training FLOPs" in md) == (best >= 0.55)


def test_sizes_grow_and_the_single_stack_sees_as_many_history_tokens() -> None:
    for size in SIZES:
        astro, single = size_config("astro", SMALL, size), size_config("transformer", SMALL, size)
        assert astro.n_blocks * astro.max_block_len == single.max_block_len == size.history * SMALL.n_blocks
        assert (astro.d_model, astro.n_layers) == (single.d_model, single.n_layers) == (size.d_model, size.n_layers)
    params = [non_embedding_parameters(AstroModel(size_config("astro", SMALL, s))) for s in SIZES]
    assert params == sorted(params) and len(set(params)) == len(params)


def test_flops_are_counted_per_row_and_grow_with_the_model() -> None:
    torch.manual_seed(0)
    flops = []
    for size in SIZES[:2]:
        cfg = size_config("astro", SMALL, size)
        ds = load_data("synthetic", cfg, 64, 8, seed=0).train
        flops.append(train_flops_per_row(AstroModel(cfg), ds, seed=0))
    # s doubles the width (4x the matmul FLOPs per token) and the history: several times xs's FLOPs
    assert flops[1] > 3 * flops[0] > 0
    cfg = size_config("transformer", SMALL, SIZES[0])
    ds = load_data("synthetic", cfg, 64, 8, seed=0).train
    assert train_flops_per_row(build_peer("transformer", cfg), ds, seed=0) > 0


def test_slopes_recover_a_known_line() -> None:
    rows = [
        {
            "data": "d",
            "model": m,
            "train_flops_per_row": 10.0**k,
            "non_embedding_parameters": 10.0 ** (2 * k),
            "logloss": 0.5 - 0.02 * k,
            "auc": 0.7 + 0.01 * k,
        }
        for m in ("astro", "transformer")
        for k in (1, 2, 3)
    ]
    fit = slopes(rows)["d"]["astro"]
    assert fit["logloss_per_decade_train_flops_per_row"] == pytest.approx(-0.02)
    assert fit["auc_per_decade_train_flops_per_row"] == pytest.approx(0.01)
    assert fit["logloss_per_decade_non_embedding_parameters"] == pytest.approx(-0.01)
    assert np.isfinite(list(fit.values())).all()


def test_equal_compute_reads_the_single_stacks_line_inside_its_range_only() -> None:
    def row(model: str, flops: float, logloss: float, size: str) -> dict[str, Any]:
        return {"data": "d", "model": model, "train_flops_per_row": flops, "logloss": logloss, "size": size}

    stack = [row("transformer", f, 1.0 - 0.1 * np.log10(f), "t") for f in (1e6, 1e8)]  # the line: 1 - 0.1 log10(x)
    inside = row("astro", 1e7, 0.2, "m")
    text = equal_compute([*stack, inside, row("astro", 1e9, 0.1, "l")], "d")  # l lies past the stack's range
    assert "ASTRO m" in text and "LogLoss 0.2000, the single stack's fitted line 0.3000" in text
    assert equal_compute([*stack, row("astro", 1e9, 0.1, "l")], "d") == ""


def test_pooled_runs_keep_every_point_and_refuse_one_that_two_runs_share() -> None:
    def run(seed: int) -> dict[str, Any]:
        points = [
            {"data": "d", "model": m, "size": {"name": s}, "seed": seed, "auc": 0.6 + i / 100, "logloss": 0.5,
             "train_flops_per_row": 10.0 ** (6 + i), "non_embedding_parameters": 100 * (i + 1), "parameters": 1e4}
            for i, s in enumerate(("xs", "s")) for m in ("astro", "transformer")
        ]  # fmt: skip
        return {"note": f"seed {seed}", "plan": {}, "points": points}

    pooled = pool([run(0), run(1)])
    assert len(pooled["points"]) == 8 and {r["seeds"] for r in pooled["rows"]} == {2}
    assert pooled["note"] == "2 runs pooled: (seed 0) + (seed 1)"
    with pytest.raises(ValueError, match=r"\('d', 'astro', 'xs', 0\)"):
        pool([run(0), run(0)])
