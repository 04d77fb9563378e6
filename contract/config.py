"""The single source of truth for ASTRO: model dims, the block spec and every shape limit.

Export, TensorRT profiles, every ``config.pbtxt`` and the client read these values;
nothing restates a number by hand. This module imports no torch so that the
client (``pip install .[client]``) can use it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Behaviours and scenarios of the synthetic music-app domain. Ids outside these
# ranges are legal input: the graphs map them to a learned "unknown" slot.
BEHAVIORS: tuple[str, ...] = ("play", "like", "share", "skip")
SCENARIOS: tuple[str, ...] = ("home", "search", "radio", "playlist")


@dataclass(frozen=True)
class BlockSpec:
    """One sequence scale: the events of ``behaviors`` (all when empty), newest ``max_len`` kept."""

    name: str
    behaviors: tuple[str, ...]  # () keeps every behaviour (the short-term "recent" scale)
    max_len: int

    def keeps(self, behavior_id: int) -> bool:
        if not self.behaviors:
            return True
        return 0 <= behavior_id < len(BEHAVIORS) and BEHAVIORS[behavior_id] in self.behaviors

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "behaviors": list(self.behaviors), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockSpec:
        return cls(name=str(d["name"]), behaviors=tuple(d["behaviors"]), max_len=int(d["max_len"]))


@dataclass(frozen=True)
class AstroConfig:
    name: str
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ffn_mult: int = 4  # FFN hidden = ffn_mult * d_model, the usual transformer ratio
    dropout: float = 0.0  # serving graphs are exported in eval mode; training may raise it
    tasks: tuple[str, ...] = ("play_complete", "like")
    item_buckets: int = 20011  # prime, so modulo hashing spreads sequential ids evenly
    n_behaviors: int = len(BEHAVIORS)
    n_scenarios: int = len(SCENARIOS)
    age_buckets: int = 32  # log2 buckets of seconds: bucket 31 covers ages >= 2^30 s (~34 years)
    tau_min: float = 0.1  # lower bound of the dynamic temperature, keeps logits bounded
    blocks: tuple[BlockSpec, ...] = field(
        default_factory=lambda: (
            BlockSpec("play", ("play",), 128),
            BlockSpec("like", ("like", "share"), 32),
            BlockSpec("recent", (), 16),
        )
    )
    max_batch_size: int = 16  # users per request: Triton max_batch_size and TRT profile max
    max_candidates: int = 1024  # N per user per request; the client chunks longer lists

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"config field {f.name}={value!r} must be a positive integer")
            if f.type == "float" and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise ValueError(f"config field {f.name}={value!r} must be a non-negative number")
        if not (self.tasks and all(isinstance(t, str) and t for t in self.tasks)):
            raise ValueError(f"tasks={self.tasks!r} must be a non-empty list of task names")
        assert self.d_model % self.n_heads == 0, f"d_model={self.d_model} not divisible by n_heads={self.n_heads}"
        assert self.blocks, "at least one block is required"
        names = [b.name for b in self.blocks]
        assert len(set(names)) == len(names), f"block names must be unique, got {names}"
        for b in self.blocks:
            unknown = set(b.behaviors) - set(BEHAVIORS)
            assert not unknown, f"block {b.name!r} names unknown behaviours {sorted(unknown)}"
            assert b.max_len >= 1, f"block {b.name!r} max_len={b.max_len} must be >= 1"
        assert self.max_batch_size >= 1 and self.max_candidates >= 1

    # ---- derived shapes -------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def max_block_len(self) -> int:
        """Largest Tb a request may carry: the longest block."""
        return max(b.max_len for b in self.blocks)

    @property
    def max_user_tokens(self) -> int:
        """Largest S = Nb * Tb of the cached keys/values."""
        return self.n_blocks * self.max_block_len

    # ---- (de)serialisation: the JSON half of a checkpoint ----------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["blocks"] = [b.to_dict() for b in self.blocks]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AstroConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(known)}")
        kw = dict(d)
        tasks = kw.get("tasks", list(cls.tasks))
        if not isinstance(tasks, list | tuple):
            raise ValueError(f"tasks={tasks!r} must be a list of task names")
        kw["tasks"] = tuple(tasks)
        if "blocks" in kw:
            kw["blocks"] = tuple(BlockSpec.from_dict(b) for b in kw["blocks"])
        return cls(**kw)

    @classmethod
    def from_name(cls, name: str) -> AstroConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]


PRESETS: dict[str, AstroConfig] = {
    # tiny: unit tests and parity grids; every path runs in milliseconds.
    "tiny": AstroConfig(
        name="tiny",
        d_model=32,
        n_heads=2,
        n_layers=2,
        item_buckets=1009,
        blocks=(BlockSpec("play", ("play",), 12), BlockSpec("like", ("like", "share"), 6), BlockSpec("recent", (), 4)),
        max_batch_size=8,
        max_candidates=512,
    ),
    # small: the embedded, trained default; trains in minutes and serves fast on 2 CPU cores.
    "small": AstroConfig(name="small"),
    # paper: sized like a production ranking model (long play history) for GPU benchmarks.
    "paper": AstroConfig(
        name="paper",
        d_model=256,
        n_heads=8,
        n_layers=4,
        item_buckets=1_000_003,
        blocks=(
            BlockSpec("play", ("play",), 1024),
            BlockSpec("like", ("like", "share"), 256),
            BlockSpec("recent", (), 64),
        ),
        max_batch_size=64,
        max_candidates=2048,
    ),
}
