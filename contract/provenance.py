"""Which checkpoint a model repository was exported from: ``provenance.json`` at the repository root, read
back, checked against the checkpoint as it is now, and the names under which the served ensemble publishes it.

``python -m export`` writes the record (``export/provenance.py``) beside the model folders (Triton only reads
folders, so the file is invisible to the server); ``python -m serve`` (and so ``make serve``) reads it here and
warns before serving a repository whose checkpoint has changed since, e.g. after ``make train``. The ensemble's
``config.pbtxt`` carries the record as ``parameters`` (:func:`Provenance.parameters`:
:data:`PROVENANCE_PARAMETERS`), so a client (``client health``) and QA (``make parity``, which refuses a
checkpoint whose hash differs from the served one) learn from the server itself what it serves.

The checkpoint's identity is the SHA-256 of its ``config.json`` and ``model.safetensors``. Torch-free (the
standard library only): the server's launcher and the client use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVENANCE = "provenance.json"
PROVENANCE_PARAMETERS = (  # what the ensemble's config publishes of the record
    "checkpoint_sha256",  # SHA-256 of the checkpoint's config.json and model.safetensors
    "exported_at",  # UTC, ISO 8601: when this content was first exported
    "toolchain",  # "torch 2.13.0, onnx 1.19.1, onnxruntime 1.23.2" (or tensorrt + polygraphy)
    "target_container",  # the NGC image the repository is for, or the python target's server
)
# the two files of a checkpoint folder, as model.checkpoint names them (CONFIG, WEIGHTS); not imported
# from there because that module imports torch
CHECKPOINT_FILES = ("config.json", "model.safetensors")
ROOT = Path(__file__).resolve().parent.parent
_CHUNK = 1 << 20


class ProvenanceError(RuntimeError):
    """``provenance.json`` is unreadable or malformed."""


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
