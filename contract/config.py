"""The single source of truth for ASTRO: model dims, vocabularies, the block spec and every shape limit.

Export, TensorRT profiles, every ``config.pbtxt`` and the client read these values;
nothing restates a number by hand. Validated by pydantic (frozen, unknown keys
refused) with explicit checks, never ``assert``: the checks hold under ``python -O``.
This module imports no torch so that the client (``pip install .[client]``) can use it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    from typing import Self
else:  # the client installs on 3.10 too
    from typing_extensions import Self

PositiveInt = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]  # safe in Triton parameters and CSV


class ConfigError(ValueError):
    """A model config that cannot describe a model; the message names every offending field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class BlockSpec(_Frozen):
    """One sequence scale (an MSE extraction strategy): the events of ``behaviors`` (all when
    empty), newest ``max_len`` kept. Each block has its own stack of ATL layers."""

    name: Name
    behaviors: tuple[Name, ...]  # () keeps every behaviour (the short-term "recent" scale)
    max_len: PositiveInt


class AstroConfig(_Frozen):
    name: Name
    d_model: PositiveInt = 64
    n_heads: PositiveInt = 4
    n_layers: PositiveInt = 2  # ATL layers per block stack (the paper's Climber: 2)
    ffn_mult: PositiveInt = 4  # FFN hidden = ffn_mult * d_model, the usual transformer ratio
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # serving graphs are exported in eval mode
    tasks: tuple[Name, ...] = ("play_complete", "like")
    # Vocabularies: id i of a history event's behaviour is behaviors[i]; ids outside a vocabulary are
    # legal input and map to a learned "unknown" slot. The served ensemble publishes both.
    behaviors: tuple[Name, ...] = ("play", "like", "share", "skip")
    scenarios: tuple[Name, ...] = ("home", "search", "radio", "playlist")
    item_buckets: PositiveInt = 20011  # prime, so modulo hashing spreads sequential ids evenly
    position_buckets: PositiveInt = 8  # log2 buckets of a relative position distance, per sign (>= 2^7 share one)
    time_buckets: PositiveInt = 24  # log2 buckets of a time difference in seconds, per sign (>= 2^23 s ~ 97 days)
    tau_min: Annotated[float, Field(gt=0.0)] = 0.1  # lower bound of the dynamic temperature: bounded logits
    relative_bias: bool = True  # ATL's relative position/time bias (False: the paper's "-ATL" ablation)
    dynamic_temperature: bool = True  # ATL's learned temperature (False: fixed sqrt(dh), the "-ATL" ablation)
    bgf: bool = True  # bit-wise gating fusion of the block outputs (False: blocks concatenated, "-BGF")
    blocks: tuple[BlockSpec, ...] = (
        BlockSpec(name="play", behaviors=("play",), max_len=48),
        BlockSpec(name="like", behaviors=("like", "share"), max_len=48),
        BlockSpec(name="recent", behaviors=(), max_len=48),
    )
    max_batch_size: PositiveInt = 16  # users per request: Triton max_batch_size and TRT profile max
    max_candidates: PositiveInt = 1024  # N per user per request; the client chunks longer lists

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        problems += naming_problems(self.tasks, self.behaviors, self.scenarios, self.blocks)
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
    def n_behaviors(self) -> int:
        return len(self.behaviors)

    @property
    def n_scenarios(self) -> int:
        return len(self.scenarios)

    @property
    def max_block_len(self) -> int:
        """Largest Tb a request may carry: the longest block."""
        return max(b.max_len for b in self.blocks)

    @property
    def max_user_tokens(self) -> int:
        """Largest S = Nb * Tb of the cached keys/values."""
        return self.n_blocks * self.max_block_len

    # ---- (de)serialisation: the JSON half of a checkpoint ----------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> AstroConfig:
        """Parse and validate; raises :class:`ConfigError` with one line naming every bad field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise ConfigError(describe(e)) from None

    def replace(self, **changes: Any) -> AstroConfig:
        """A validated copy with ``changes`` (pydantic's ``model_copy`` skips validation)."""
        try:
            return AstroConfig.model_validate({**self.model_dump(), **changes}, strict=False)
        except ValidationError as e:
            raise ConfigError(describe(e)) from None

    @classmethod
    def from_name(cls, name: str) -> AstroConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]


def naming_problems(
    tasks: tuple[str, ...], behaviors: tuple[str, ...], scenarios: tuple[str, ...], blocks: tuple[BlockSpec, ...]
) -> list[str]:
    """The rules a config and the spec it publishes (``contract/serving_spec.py``) both hold: at least one task
    and one block, no name twice in a vocabulary or among the blocks, every block's behaviours in ``behaviors``."""
    problems = []
    if not tasks:
        problems.append("tasks is empty: name at least one task")
    if not blocks:
        problems.append("blocks is empty: at least one block is required")
    for field, names in (("tasks", tasks), ("behaviors", behaviors), ("scenarios", scenarios)):
        if len(set(names)) != len(names):
            problems.append(f"{field}={list(names)} repeats a name")
    block_names = [b.name for b in blocks]
    if len(set(block_names)) != len(block_names):
        problems.append(f"block names {block_names} repeat a name")
    for b in blocks:
        unknown = sorted(set(b.behaviors) - set(behaviors))
        if unknown:
            problems.append(f"block {b.name!r} keeps behaviours {unknown} outside behaviors={list(behaviors)}")
    return problems


def describe(e: ValidationError) -> str:
    """One line for every problem pydantic found, each naming its field and the value it got."""
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        got = f" (got {value!r})" if where and isinstance(value, str | int | float) and err["type"] != "missing" else ""
        parts.append(f"{where}: {msg}{got}" if where else msg)
    return "; ".join(parts)


def _equal_blocks(max_len: int) -> tuple[BlockSpec, ...]:
    """The paper-sized presets' four equal-length extraction strategies: plays, likes and shares,
    skips (negative feedback), and the most recent events of any behaviour."""
    return tuple(
        BlockSpec(name=name, behaviors=behaviors, max_len=max_len)
        for name, behaviors in (("play", ("play",)), ("like", ("like", "share")), ("skip", ("skip",)), ("recent", ()))
    )


PRESETS: dict[str, AstroConfig] = {
    # tiny: unit tests and parity grids; every path runs in milliseconds.
    "tiny": AstroConfig(
        name="tiny",
        d_model=32,
        n_heads=2,
        n_layers=2,
        item_buckets=1009,
        blocks=(
            BlockSpec(name="play", behaviors=("play",), max_len=12),
            BlockSpec(name="like", behaviors=("like", "share"), max_len=12),
            BlockSpec(name="recent", behaviors=(), max_len=12),
        ),
        max_batch_size=8,
        max_candidates=512,
    ),
    # small: the embedded, trained default; equal blocks of 48 (the paper's equal-length MSE);
    # trains in minutes and serves fast on 2 CPU cores.
    "small": AstroConfig(name="small"),
    # climber: the paper's Climber configuration, 2 layers and 200 retained events (4 blocks of 50).
    # d_model and heads are ours (the paper does not give them).
    "climber": AstroConfig(
        name="climber",
        d_model=128,
        n_heads=4,
        n_layers=2,
        item_buckets=1_000_003,
        blocks=_equal_blocks(50),
        max_batch_size=64,
        max_candidates=2048,
    ),
    # climber-large: the paper's Climber-large, 12 layers and 800 retained events (4 blocks of 200).
    "climber-large": AstroConfig(
        name="climber-large",
        d_model=256,
        n_heads=8,
        n_layers=12,
        item_buckets=1_000_003,
        blocks=_equal_blocks(200),
        max_batch_size=64,
        max_candidates=2048,
    ),
}
