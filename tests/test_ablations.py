"""The ablation/peer table: results pooled across files, goals judged from the numbers, README sections
rewritten from the results (and the committed README matching its committed results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from contract.config import AstroConfig
from model import diagnostics, scaling
from model.ablations import goal_lines, merge, run, table
from model.checkpoint import load_checkpoint, load_metrics
from model.readme import TUNING, checkpoint_table, section, tuning_table, write_section
from model.train import CPU, RELIABILITY_PLOT, TrainParams

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("play_complete", "like")


def metrics(auc: float, logloss: float) -> dict[str, dict[str, float]]:
    return {m: {t: v for t in TASKS} for m, v in (("auc", auc), ("logloss", logloss), ("gauc", auc), ("ece", 0.01))}


def result(seeds: list[int], variants: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    runs = {v: [metrics(a, ll) for a, ll in values] for v, values in variants.items()}
    selection = {v: [{"seed": s, "chosen_epoch": 3} for s in seeds] for v in variants}
    return {
        "data": "movielens",
        "params": {"lr": 0.003},
        "config": {"name": "small"},
        "seeds": seeds,
        "runs": runs,
        "selection": selection,
        "train_seconds": {v: [1.0] * len(seeds) for v in variants},
    }


def test_merge_pools_seeds_and_keeps_popularity_once() -> None:
    a = result([0, 2], {"full": [(0.86, 0.40), (0.88, 0.38)], "popularity": [(0.80, 0.46), (0.80, 0.46)]})
    b = result([0, 1, 2], {"pooled": [(0.87, 0.39)] * 3, "popularity": [(0.80, 0.46)] * 3})
    merged = merge([a, b])
    assert merged["seeds"] == [0, 1, 2]
    assert len(merged["runs"]["full"]) == 2 and len(merged["runs"]["pooled"]) == 3
    assert [s["seed"] for s in merged["selection"]["popularity"]] == [0, 2, 1]
    with pytest.raises(SystemExit, match="other data, config or parameters"):
        merge([a, {**b, "params": {"lr": 0.001}}])


def test_goals_are_judged_from_the_means() -> None:
    r = result([0, 1], {"full": [(0.87, 0.40), (0.89, 0.38)], "pooled": [(0.90, 0.37), (0.90, 0.37)]})
    lines = goal_lines(r, TASKS)
    assert "* AUC like ≥ mean-pooled history + MLP (DLRM / YouTube-DNN style): 0.8800 vs 0.9000, **missed**" in lines
    assert "* AUC like ≥ 0.87: 0.8800, met" in lines
    assert "* LogLoss like ≤ 0.338: 0.3900, **missed**" in lines
    text = table(r, TASKS)
    assert "| ASTRO (ours) | 2 | 0.8800 ± 0.0141 |" in text and "3, 3" in text


def test_readme_section_is_rewritten_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- x -->\nold\n<!-- /x -->\nb\n")
    write_section(readme, "x", "new\ntable")
    assert readme.read_text() == "a\n<!-- x -->\nnew\ntable\n<!-- /x -->\nb\n" and section(readme, "x") == "new\ntable"
    with pytest.raises(ValueError, match="needs exactly one <!-- y -->"):
        write_section(readme, "y", "z")


@pytest.mark.parametrize("data", ["movielens", "synthetic"])
def test_committed_readme_tables_are_the_committed_results(data: str) -> None:
    """The README's ablation tables are what the code prints from docs/ablations/<data>.json."""
    path = ROOT / "docs" / "ablations" / f"{data}.json"
    if not path.is_file() or f"<!-- ablations:{data} -->" not in (ROOT / "README.md").read_text():
        pytest.skip(f"no committed {data} results")
    assert section(ROOT / "README.md", f"ablations:{data}") == table(json.loads(path.read_text()), TASKS).strip()


def test_a_tiny_run_saves_its_first_model_and_writes_results(tmp_path: Path) -> None:
    """run(): every variant trained on the same rows, results written after each, seed 0's ASTRO saved."""
    torch.set_num_threads(1)
    out, ckpt = tmp_path / "results.json", tmp_path / "ckpt"
    tiny = AstroConfig.from_name("tiny")
    r = run(
        tiny, "synthetic", [0], ["full", "pooled"], TrainParams(max_epochs=1, batch_size=16), CPU, ckpt, out, (48, 16)
    )
    torch.use_deterministic_algorithms(False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert set(r["runs"]) == {"full", "pooled", "popularity"} and [s["seed"] for s in r["selection"]["pooled"]] == [0]
    model = load_checkpoint(ckpt)
    assert model.cfg == tiny and load_metrics(ckpt)["model"] == r["runs"]["full"][0]
    assert (ckpt / RELIABILITY_PLOT).read_bytes()[:4] == b"\x89PNG"
    assert "| ASTRO (ours) | 1 |" in table(r, tiny.tasks)


@pytest.mark.parametrize("name", ["small", "small-movielens"])
def test_committed_readme_checkpoint_and_tuning_sections_are_their_files(name: str) -> None:
    """The README's checkpoint and tuning tables are what `python -m model.readme` writes from the files."""
    readme = ROOT / "README.md"
    metrics_path = ROOT / "checkpoints" / name / "metrics.json"
    if f"<!-- checkpoint:{name} -->" not in readme.read_text() or not metrics_path.is_file():
        pytest.skip(f"no generated section for checkpoints/{name}")
    assert section(readme, f"checkpoint:{name}") == checkpoint_table(json.loads(metrics_path.read_text()))
    runs = {f.stem: json.loads(f.read_text()) for f in sorted((ROOT / TUNING).glob("*.json"))}
    assert section(readme, "tuning") == tuning_table(runs)


def test_committed_readme_diagnostics_are_the_committed_figures() -> None:
    path = ROOT / "docs" / "ablations" / "diagnostics-movielens.json"
    if not path.is_file():
        pytest.skip("no committed diagnostics")
    assert section(ROOT / "README.md", "diagnostics:movielens") == diagnostics.table(json.loads(path.read_text()))


def test_committed_readme_scaling_section_is_the_committed_run() -> None:
    path = ROOT / "docs" / "scaling" / "scaling.json"
    if not path.is_file():
        pytest.skip("no committed scaling run")
    result = json.loads(path.read_text())
    assert section(ROOT / "README.md", "scaling") == scaling.summary(result).strip()
    assert (ROOT / "docs" / "scaling" / "scaling.md").read_text() == scaling.markdown(result)
