"""Checkpoints that load without executing code: ``model.safetensors`` + ``config.json``.

Never pickle: a checkpoint is data, so a tampered file can at worst fail to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contract.config import AstroConfig, ConfigError
from model.astro import AstroModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "small"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match its config."""


def save_checkpoint(model: AstroModel, directory: Path, metrics: dict[str, Any] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt", "preset": model.cfg.name})
    (directory / CONFIG).write_text(model.cfg.to_json() + "\n")
    if metrics is not None:
        (directory / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def load_config(directory: Path) -> AstroConfig:
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(
            f"no {CONFIG} in {directory}: a checkpoint is a folder with {CONFIG} and {WEIGHTS}; "
            "train one with `python -m model.train --out DIR`"
        )
    try:
        return AstroConfig.from_json(path.read_text())
    except ConfigError as e:
        raise CheckpointError(f"{path} is not a valid ASTRO config: {e}") from None


def load_checkpoint(directory: Path) -> AstroModel:
    """Rebuild the model from ``config.json`` and load the weights; returns it in eval mode."""
    cfg = load_config(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"no {WEIGHTS} in {directory} (only safetensors checkpoints load; pickle never does)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    model = AstroModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match {directory / CONFIG} (preset {cfg.name!r}): "
            f"missing={missing[:5]} unexpected={unexpected[:5]} shape mismatches={wrong[:5]}; "
            "re-train or pass the config the weights were trained with"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()


def load_metrics(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / METRICS).read_text())
    return data


def same_weights(a: AstroModel, b: AstroModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
