"""A run's results, typed: what ``python -m bench`` writes to ``results.json`` and renders from it.

Each section's producer returns its own dataclasses (:class:`~bench.turbo.TurboCell`, :class:`~bench.served.Served`,
...); :class:`Results` holds them all. ``dump`` writes them as JSON (``dataclasses.asdict``) and ``load`` reads
them back into the same types, so a report can be re-rendered from any ``results.json`` without measuring.
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from bench.block_attention import Row as BlockRow
from bench.machine import Machine
from bench.op_profile import OpTime, SteadyRate
from bench.overload import Overload
from bench.replicas import Replicas
from bench.roofline import Efficiency
from bench.runtimes import RuntimeCell
from bench.served import Served
from bench.sessions import SessionModel, SessionRun
from bench.timing import Stats
from bench.training import TrainingResult
from bench.turbo import TurboCell
from bench.variants import AS_EXPORTED
from contract.config import AstroConfig

T = TypeVar("T")


@dataclass(frozen=True)
class SessionRunRow(SessionRun):
    """One run of (f) (a round, a candidate count, a cache side), as ``run_sessions`` lists them."""

    round: int = 0


@dataclass(frozen=True)
class SideSummary:
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    hits: int
    misses: int
    hit_rate: float
    encoder_share: float | None
    scorer_cache_activity: int
    wrapped: bool


@dataclass(frozen=True)
class SessionSummary:
    off: SideSummary
    on: SideSummary
    throughput_on_over_off: Stats


@dataclass(frozen=True)
class TraceSummary:
    requests: int
    sessions: int
    distinct_users: int
    ideal_hit_rate: float


@dataclass(frozen=True)
class Sessions:
    """Section (f) on one repository: ``bench.sessions.run_sessions``' result."""

    model: SessionModel
    concurrency: int
    rounds: int
    cache_size: int
    traces: dict[str, TraceSummary]  # N -> the traces of its rounds
    runs: list[SessionRunRow]
    summary: dict[str, SessionSummary]  # N -> on/off
    config: str = AS_EXPORTED


@dataclass(frozen=True)
class Gpu:
    """Section (e): (a) and the PyTorch half of (b) on the CUDA device, where PyTorch sees one."""

    device: str
    turbo: list[TurboCell] = field(default_factory=list)
    runtimes: list[RuntimeCell] = field(default_factory=list)
    matmul_flops: Stats | None = None


@dataclass(frozen=True)
class Results:
    command: str
    started: str
    seconds: float
    machine: Machine
    config: dict[str, Any]  # the checkpoint's AstroConfig, and its path
    settings: dict[str, Any]  # the preset's fields and the flags of the run
    turbo: list[TurboCell]  # (a)
    runtimes: list[RuntimeCell]  # (b)
    served: Served  # (c)
    sessions: Sessions | None  # (f) as exported
    session_variants: list[Sessions]  # (f) on the repository variants
    matmul_flops: Stats  # (d)'s limit
    block_attention: list[BlockRow]
    gpu: Gpu  # (e)
    training: list[TrainingResult]  # (g)
    efficiency: list[Efficiency]  # (d)
    overload: Overload | None = None
    replicas: Replicas | None = None  # (h)
    op_profile: list[OpTime] = field(default_factory=list)  # (d) per operator
    ort_matmul_flops: Stats | None = None
    steady: list[SteadyRate] = field(default_factory=list)  # (d) each graph back to back: the goals' rates

    @property
    def cfg(self) -> AstroConfig:
        return AstroConfig.model_validate({k: v for k, v in self.config.items() if k != "checkpoint"}, strict=False)

    @property
    def all_sessions(self) -> list[Sessions]:
        """(f) as exported, then the repository variants it was also run on."""
        return [self.sessions, *self.session_variants] if self.sessions else []


def as_type(tp: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as type ``tp``: dataclasses field by field (a missing field takes its default)."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        return None
    if tp is Stats:
        return Stats.from_dict(value)
    if dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        return cast(Any, tp)(**{k: as_type(hints[k], v) for k, v in value.items() if k in names})
    if origin is list:
        return [as_type(args[0], v) for v in value]
    if origin is tuple:
        return tuple(as_type(args[0], v) for v in value)
    if origin is dict:
        return {k: as_type(args[1], v) for k, v in value.items()}
    if origin in (Union, types.UnionType):
        return as_type(next(a for a in args if a is not type(None)), value)
    return value


def load(cls: type[T], path: Path) -> T:
    """A results file (``results.json``, ``overload.json``, ``replicas.json``) as ``cls``."""
    loaded: T = as_type(cls, json.loads(path.read_text()))
    return loaded


def dump(results: object, path: Path) -> None:
    assert dataclasses.is_dataclass(results) and not isinstance(results, type), "dump takes a results dataclass"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n")
