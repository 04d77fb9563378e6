"""Checkpoints: safetensors + JSON round trips, every broken folder is a CheckpointError, and the
embedded default ``checkpoints/small`` really beats popularity on fresh held-out users.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_helpers import SEED, case_rng, perturbed_model, torch_threads
from safetensors import safe_open
from safetensors.torch import load_file

from contract.config import AstroConfig
from model.astro import AstroModel
from model.checkpoint import (
    CONFIG,
    DEFAULT_CHECKPOINT,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    load_config,
    load_metrics,
    same_weights,
    save_checkpoint,
)
from model.metrics import auc
from model.random_inputs import random_request
from model.synthetic import SyntheticWorld, WorldSpec
from model.train import popularity_scores, predict

CFG = AstroConfig.from_name("tiny")
MIN_AUC_MARGIN = 0.05  # model AUC over popularity AUC, per task, that the embedded checkpoint must keep
FRESH_USERS = 300  # fresh held-out users: ~9,600 (user, candidate) pairs, AUC standard error ~0.006
FRESH_SEED_OFFSET = 3  # model.train draws train users with seed + 1 and held-out users with seed + 2


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    with torch_threads(min(2, torch.get_num_threads())):  # CI has 2 cores
        yield


def trained_like_model() -> AstroModel:
    """A tiny model whose weights are not at their init values (so a load that re-inits shows)."""
    return perturbed_model(CFG, scale=0.1, attention=False)


def scores(model: AstroModel, seed: int = 0) -> dict[str, torch.Tensor]:
    r = random_request(model.cfg, case_rng(seed), 4, model.cfg.max_block_len, 32, empty_users=1)
    h, req, cand = r.to_torch()
    with torch.no_grad():
        return {"split": model.split(h, req, cand), "sumi": model.sumi(h, req, cand)}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    directory = tmp_path / "ckpt"
    save_checkpoint(trained_like_model(), directory, metrics={"note": "test"})
    return directory


# ---- round trip -----------------------------------------------------------------------------------


def test_round_trip_is_exact(saved: Path) -> None:
    original = trained_like_model()
    loaded = load_checkpoint(saved)
    assert not loaded.training, "load_checkpoint must return the model in eval mode"
    assert loaded.cfg == CFG
    assert same_weights(original, loaded)
    before, after = scores(original), scores(loaded)
    for path in before:
        assert torch.equal(before[path], after[path]), f"{path} scores changed through save/load"
    assert load_metrics(saved) == {"note": "test"}
    assert sorted(p.name for p in saved.iterdir()) == sorted([CONFIG, WEIGHTS, "metrics.json"])
    # a second save of the loaded model stores the same tensors (not the same bytes: safetensors
    # writes its JSON header from a hash map, so key order may differ between processes)
    again = saved.parent / "again"
    save_checkpoint(loaded, again)
    first, second = load_file(str(saved / WEIGHTS)), load_file(str(again / WEIGHTS))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with safe_open(str(saved / WEIGHTS), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "preset": "tiny"}


# ---- broken folders -------------------------------------------------------------------------------


def test_missing_folder_or_files(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"no {CONFIG} in .*python -m model.train --out DIR"):
        load_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=rf"no {CONFIG} in .*empty"):
        load_checkpoint(empty)
    (saved / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=rf"no {WEIGHTS} in .*only safetensors"):
        load_checkpoint(saved)


def edit_config(directory: Path, **changes: Any) -> None:
    d = json.loads((directory / CONFIG).read_text())
    d.update(changes)
    (directory / CONFIG).write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d_model": 64}, r"'item_emb.weight: checkpoint \(1009, 32\) vs config \(1009, 64\)"),
        ({"item_buckets": 2003}, r"item_emb.weight: checkpoint \(1009, 32\) vs config \(2003, 32\)"),
        ({"n_layers": 3}, r"missing=\['stack.2"),
        ({"n_layers": 1}, r"unexpected=\['stack.1"),
        ({"tasks": ["a", "b", "c"]}, r"head.2.weight: checkpoint \(2, 32\) vs config \(3, 32\)"),
    ],
)
def test_config_that_does_not_match_the_weights(saved: Path, changes: dict[str, Any], message: str) -> None:
    edit_config(saved, **changes)
    with pytest.raises(CheckpointError, match=r"does not match .*config.json \(preset 'tiny'\)") as err:
        load_checkpoint(saved)
    assert any(s in str(err.value) for s in ("re-train", "pass the config")), "the message must say what to do"
    assert re.search(message, str(err.value)), str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"is not a valid ASTRO config: Invalid JSON"),
        ("null", r"is not a valid ASTRO config"),
        ('{"name": "x", "colour": 3}', r"colour: Extra inputs are not permitted"),
        ('{"name": "x", "n_heads": 3}', r"d_model=64 is not divisible by n_heads=3"),
        ('{"name": "x", "blocks": [{"name": "a", "behaviors": ["dance"], "max_len": 4}]}', r"\['dance'\] outside"),
        ('{"name": "x", "behaviors": ["play", "play"]}', r"behaviors=\['play', 'play'\] repeats a name"),
    ],
)
def test_invalid_config(saved: Path, text: str, message: str) -> None:
    (saved / CONFIG).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_config(saved)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


@pytest.mark.parametrize("damage", ["truncated", "empty", "header_only", "garbage"])
def test_corrupt_weights(saved: Path, damage: str) -> None:
    raw = (saved / WEIGHTS).read_bytes()
    data = {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "header_only": raw[:64],
        "garbage": np.random.default_rng(SEED).bytes(4096),
    }[damage]
    (saved / WEIGHTS).write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS} is not a readable safetensors file: "):
        load_checkpoint(saved)


class _Booby:
    """Unpickling this object would create ``self.marker``: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_named_safetensors_is_refused(saved: Path, tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pickle-code-ran"
    state = trained_like_model().state_dict()
    if writer == "torch.save":
        torch.save({"state": state, "booby": _Booby(marker)}, saved / WEIGHTS)
    else:
        (saved / WEIGHTS).write_bytes(pickle.dumps({"booby": _Booby(marker), "state": state}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(saved)
    assert not marker.exists(), "loading executed code from a pickle"


# ---- malformed configs are CheckpointErrors, never raw errors from deep inside torch ----


@pytest.mark.parametrize(
    "changes",
    [{"n_heads": 0}, {"d_model": 32.0}, {"n_layers": -1}, {"tau_min": "0.1"}],
    ids=["n_heads=0", "d_model=32.0", "n_layers=-1", "tau_min=str"],
)
def test_malformed_config_is_a_checkpoint_error(saved: Path, changes: dict[str, Any]) -> None:
    edit_config(saved, **changes)
    try:
        load_checkpoint(saved)
    except CheckpointError:
        return
    except Exception as e:  # anything but CheckpointError is the defect under test
        pytest.fail(f"{changes} raised {type(e).__name__}: {e}")
    pytest.fail(f"{changes} loaded without error")


def test_inconsistent_config_is_refused_under_python_O(saved: Path, tmp_path: Path) -> None:
    """The config's checks are not asserts: `python -O -m export` still refuses n_heads=3 with
    d_model=64, in one line naming both fields, exit 2, before writing anything."""
    edit_config(saved, n_heads=3, d_model=64)
    out = tmp_path / "repo"
    run = subprocess.run(
        [sys.executable, "-O", "-m", "export", "--checkpoint", str(saved), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "d_model=64" in errors[0] and "n_heads=3" in errors[0], errors[0]
    assert not out.exists()


def test_string_tasks_are_refused(saved: Path) -> None:
    edit_config(saved, tasks="ab")
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


# ---- the embedded default checkpoint ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_checkpoint() -> Path:
    if not (DEFAULT_CHECKPOINT / CONFIG).is_file():
        pytest.skip(f"the embedded checkpoint {DEFAULT_CHECKPOINT} is absent (train it: python -m model.train)")
    return DEFAULT_CHECKPOINT


def test_default_checkpoint_metrics_beat_popularity(default_checkpoint: Path) -> None:
    model = load_checkpoint(default_checkpoint)
    # the small preset, trained with the dropout chosen on validation (eval mode: no part of the served graphs)
    small = AstroConfig.from_name("small").replace(dropout=model.cfg.dropout)
    assert model.cfg == small, "the embedded default is the small preset"
    metrics = load_metrics(default_checkpoint)
    for task in model.cfg.tasks:
        m, p = metrics["model"]["auc"][task], metrics["popularity"]["auc"][task]
        assert m - p >= MIN_AUC_MARGIN, f"{task}: recorded model AUC {m:.4f} vs popularity {p:.4f}"


def test_default_checkpoint_beats_popularity_on_fresh_users(default_checkpoint: Path) -> None:
    """Re-evaluate on held-out users neither training nor metrics.json saw (seed convention of model.train)."""
    model = load_checkpoint(default_checkpoint)
    metrics = load_metrics(default_checkpoint)
    seed = int(metrics["seed"])
    world = SyntheticWorld(WorldSpec(seed=seed))
    train_ds = world.dataset(model.cfg, int(metrics["train_rows"]), seed + 1)  # the popularity baseline's data
    fresh = world.dataset(model.cfg, FRESH_USERS, seed + FRESH_SEED_OFFSET)
    assert not np.array_equal(fresh.cand_item_ids[:5], world.dataset(model.cfg, 5, seed + 2).cand_item_ids)
    model_auc = auc(predict(model, fresh), fresh.labels, model.cfg.tasks)
    pop_auc = auc(popularity_scores(train_ds, fresh), fresh.labels, model.cfg.tasks)
    for task in model.cfg.tasks:
        margin = model_auc[task] - pop_auc[task]
        assert margin >= MIN_AUC_MARGIN, (
            f"{task}: fresh held-out AUC model {model_auc[task]:.4f} vs popularity {pop_auc[task]:.4f} "
            f"(margin {margin:.4f} < {MIN_AUC_MARGIN}); metrics.json says {metrics['model']['auc'][task]:.4f}"
        )
