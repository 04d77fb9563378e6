"""Which checkpoint a model repository was exported from: ``provenance.json`` at the repository root.

``python -m export`` writes it beside the model folders (Triton only reads folders, so the file is
invisible to the server); ``python -m serve`` (and so ``make serve``) reads it and warns before
serving a repository whose checkpoint has changed since, e.g. after ``make train``.

The checkpoint's identity is the SHA-256 of its ``config.json`` and ``model.safetensors``. This module
imports neither torch nor the model: the server's launcher uses it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROVENANCE = "provenance.json"
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


def write_provenance(
    repository: Path, checkpoint: Path, *, preset: str, target: str, cache_dtype: str, version: int
) -> Path:
    """Record the checkpoint of the export just written into ``repository``; returns the file's path."""
    record = Provenance(
        checkpoint=display_path(checkpoint),
        checkpoint_sha256=checkpoint_digest(checkpoint),
        preset=preset,
        target=target,
        cache_dtype=cache_dtype,
        version=version,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    path = repository / PROVENANCE
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
    return path


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
