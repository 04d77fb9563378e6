"""Which checkpoint a model repository was exported from, and with what: ``provenance.json`` at the
repository root, and the same facts published by the served ensemble.

``python -m export`` writes the file beside the model folders (Triton only reads folders, so the file is
invisible to the server); ``python -m serve`` (and so ``make serve``) reads it and warns before
serving a repository whose checkpoint has changed since, e.g. after ``make train``. The ensemble's
``config.pbtxt`` carries the record as ``parameters`` (:func:`Provenance.parameters`:
:data:`PROVENANCE_PARAMETERS`), so a client (``client health``) and QA (``make parity``, which refuses a
checkpoint whose hash differs from the served one) learn from the server itself what it serves.

The checkpoint's identity is the SHA-256 of its ``config.json`` and ``model.safetensors``. This module
imports neither torch nor the model (toolchain versions come from the installed distributions'
metadata): the server's launcher and the client use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from contract.served_provenance import PROVENANCE_PARAMETERS

PROVENANCE = "provenance.json"
# the two files of a checkpoint folder, as model.checkpoint names them (CONFIG, WEIGHTS); not imported
# from there because that module imports torch
CHECKPOINT_FILES = ("config.json", "model.safetensors")
ROOT = Path(__file__).resolve().parent.parent
_CHUNK = 1 << 20


class ProvenanceError(RuntimeError):
    """``provenance.json`` is unreadable or malformed."""


# The distributions whose versions made the repository: the ONNX graphs (torch, onnx), then what the
# target serves them with; each listed only when installed
TOOLCHAIN = {
    "python": ("torch", "onnx", "onnxruntime"),  # served by onnxruntime in the python backend
    "onnxruntime": ("torch", "onnx", "onnxruntime"),
    "tensorrt": ("torch", "onnx", "tensorrt", "polygraphy"),
}


def toolchain(target: str, distributions: Sequence[str] | None = None) -> str:
    """``"torch 2.13.0, onnx 1.19.1, onnxruntime 1.23.2"``: installed versions of the target's toolchain."""
    names = TOOLCHAIN.get(target, ()) if distributions is None else distributions
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


@dataclass(frozen=True)
class Provenance:
    checkpoint: str  # the checkpoint folder: relative to the project root when inside it, else absolute
    checkpoint_sha256: str
    preset: str
    target: str
    cache_dtype: str
    version: int
    exported_at: str  # UTC, ISO 8601
    toolchain: str = ""  # "torch 2.13.0, onnx 1.19.1, onnxruntime 1.23.2" (empty in records of older exports)
    target_container: str = ""  # the NGC image the repository is for, or the python target's server

    def parameters(self) -> dict[str, str]:
        """The :data:`PROVENANCE_PARAMETERS` the ensemble config publishes."""
        return {name: str(getattr(self, name)) for name in PROVENANCE_PARAMETERS}

    def checkpoint_path(self) -> Path:
        path = Path(self.checkpoint)
        return path if path.is_absolute() else ROOT / path

    def describe(self) -> str:
        """``preset small from checkpoints/small (sha256 0123456789ab), python target, fp32 cache``."""
        return (
            f"preset {self.preset} from {self.checkpoint} (sha256 {self.checkpoint_sha256[:12]}), "
            f"{self.target} target, {self.cache_dtype} cache, version {self.version}, exported {self.exported_at}"
        )


def checkpoint_digest(checkpoint: Path) -> str:
    """SHA-256 over the checkpoint's ``config.json`` and ``model.safetensors`` (names and lengths included)."""
    h = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = checkpoint / name
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def display_path(path: Path) -> str:
    resolved = path.expanduser().resolve()
    try:
        return str(resolved.relative_to(ROOT))
    except ValueError:
        return str(resolved)


def new_provenance(
    repository: Path,
    checkpoint: Path,
    *,
    preset: str,
    target: str,
    cache_dtype: str,
    version: int,
    target_container: str = "",
) -> Provenance:
    """The record of an export of ``checkpoint`` into ``repository``, the toolchain read from here.

    A re-export of the very same thing (checkpoint, target, toolchain...) keeps the first export's time, so
    its ensemble config stays byte-identical and a server watching the repository does not reload it."""
    record = Provenance(
        checkpoint=display_path(checkpoint),
        checkpoint_sha256=checkpoint_digest(checkpoint),
        preset=preset,
        target=target,
        cache_dtype=cache_dtype,
        version=version,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        toolchain=toolchain(target),
        target_container=target_container,
    )
    try:
        before = read_provenance(repository)
    except ProvenanceError:
        before = None
    if before is not None and dataclasses.replace(before, exported_at=record.exported_at) == record:
        return before
    return record


def save_provenance(repository: Path, record: Provenance) -> Path:
    path = repository / PROVENANCE
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
    return path


def write_provenance(
    repository: Path, checkpoint: Path, *, preset: str, target: str, cache_dtype: str, version: int
) -> Path:
    """Record the checkpoint of the export just written into ``repository``; returns the file's path."""
    record = new_provenance(
        repository, checkpoint, preset=preset, target=target, cache_dtype=cache_dtype, version=version
    )
    return save_provenance(repository, record)


def read_provenance(repository: Path) -> Provenance | None:
    """The repository's provenance, or None where it has none (exported before provenance was recorded)."""
    path = repository / PROVENANCE
    if not path.is_file():
        return None
    try:
        data: Any = json.loads(path.read_text())
        return Provenance(**data)
    except (OSError, ValueError, TypeError) as e:
        raise ProvenanceError(f"{path} is not a provenance record written by `python -m export`: {e}") from e


def stale_reason(repository: Path) -> str | None:
    """Why ``repository`` may not serve the checkpoint it was exported from, or None when it does.

    Stale: the checkpoint changed (another hash) or is gone since the export; unknown: no (readable)
    ``provenance.json``. The message ends with the command that re-exports.
    """
    try:
        record = read_provenance(repository)
    except ProvenanceError as e:
        return f"{e}; re-export to record it: make export"
    if record is None:
        return (
            f"'{repository}' has no {PROVENANCE}, so which checkpoint it serves is unknown "
            "(exported by an older `python -m export`); re-export to record it: make export"
        )
    redo = f"python -m export --checkpoint {record.checkpoint} --target {record.target}"
    if record.cache_dtype != "fp32":
        redo += f" --cache-dtype {record.cache_dtype}"
    if repository.resolve() != (ROOT / "model_repository").resolve():
        redo += f" --out {repository}"
    if record.version != 1:
        redo += f" --version {record.version}"
    checkpoint = record.checkpoint_path()
    if not all((checkpoint / name).is_file() for name in CHECKPOINT_FILES):
        return (
            f"'{repository}' was exported from {record.checkpoint} (sha256 {record.checkpoint_sha256[:12]}), "
            "which no longer exists: what it serves cannot be re-exported from there"
        )
    now = checkpoint_digest(checkpoint)
    if now != record.checkpoint_sha256:
        return (
            f"'{repository}' is stale: it was exported from {record.checkpoint} (sha256 "
            f"{record.checkpoint_sha256[:12]}, {record.exported_at}), which has changed since (now sha256 "
            f"{now[:12]}), so it serves the old model. Re-export: {redo}"
        )
    return None
