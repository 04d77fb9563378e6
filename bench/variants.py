"""The repositories the bench serves: ``python -m export --target python``, and copies changed in one setting.

Each variant is the exported repository but for what its name says, so a section can time a serving
change before/after in one run, on the same requests.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from contract.model_config import read_model_config
from contract.tensors import GRAPHS, ITEM_SCORER, USER_ENCODER
from export.repository import write_config

AS_EXPORTED = "as exported: item_scorer on 2 instances, user_encoder on 1 taking one request per execution"
SCORER1 = "before: item_scorer on 1 instance"
ENCODER_MERGING = "before: user_encoder merges requests that arrive together"


def export_python(checkpoint: Path, work: Path, cache_dtype: str = "fp32", threads: int = 1) -> Path:
    """``python -m export --target python`` into ``work/repo-<dtype>`` (its graphs in ``work/onnx``; parity skipped:
    the served sections check served == ONNX Runtime themselves)."""
    from export.__main__ import main as export_main  # torch and the exporter load only when a section exports

    repo = work / f"repo-{cache_dtype}"
    args = ["--target", "python", "--cache-dtype", cache_dtype, "--checkpoint", str(checkpoint), "--out", str(repo)]
    args += ["--work-dir", str(work / "onnx"), "--threads", str(threads), "--skip-parity"]
    if export_main(args) != 0:
        raise SystemExit(f"bench: python -m export {shlex.join(args)} failed")
    return repo


@dataclass(frozen=True)
class QueueBound:
    """A composing model's admission as its config sets it (``max_queue_size`` 0: unbounded)."""

    max_queue_size: int
    timeout_us: int
    instances: int


def queue_bounds(repository: Path) -> dict[str, QueueBound]:
    """Each composing model's queue bound and instance count, read from its ``config.pbtxt``."""
    out = {}
    for graph in GRAPHS:
        config = read_model_config(repository / graph / "config.pbtxt")
        policy = config.dynamic_batching.default_queue_policy
        instances = sum(g.count for g in config.instance_group)
        out[graph] = QueueBound(policy.max_queue_size, policy.default_timeout_microseconds, instances)
    return out


def admitted_concurrency(repository: Path) -> int | None:
    """The most closed-loop callers the exported queue bounds admit without a refusal: at each step its
    instances busy and the rest queued, ``instances + max_queue_size``, the least over the steps (None:
    unbounded). More callers than that measure admission control (the overload section), not serving."""
    bounded = [b.instances + b.max_queue_size for b in queue_bounds(repository).values() if b.max_queue_size > 0]
    return min(bounded, default=None)


def _copy(repository: Path, out: Path, graphs: tuple[str, ...], change: Callable[[mc.ModelConfig], None]) -> Path:
    shutil.copytree(repository, out, dirs_exist_ok=True)
    for graph in graphs:
        config = read_model_config(out / graph / "config.pbtxt")
        change(config)
        write_config(out / graph / "config.pbtxt", config)
    return out


def scorer_instances(repository: Path, out: Path, count: int) -> Path:
    """``item_scorer`` on ``count`` instances."""

    def change(config: mc.ModelConfig) -> None:
        config.instance_group[0].count = count

    return _copy(repository, out, (ITEM_SCORER,), change)


def encoder_merging(repository: Path, out: Path) -> Path:
    """``user_encoder`` without a preferred batch size: it merges what arrives together."""
    return _copy(repository, out, (USER_ENCODER,), lambda c: c.dynamic_batching.ClearField("preferred_batch_size"))


def unbounded(repository: Path, out: Path) -> Path:
    """The composing models with Triton's default queue: no size, no timeout."""
    return _copy(repository, out, GRAPHS, lambda c: c.dynamic_batching.ClearField("default_queue_policy"))
