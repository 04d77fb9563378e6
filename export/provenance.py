"""Write the record of an export: which checkpoint a model repository was exported from, and with what
toolchain, as ``provenance.json`` at the repository root (``contract/provenance.py`` holds the record and
reads it back).

Toolchain versions come from the installed distributions' metadata; this module imports neither torch nor
the model.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from contract.provenance import (
    PROVENANCE,
    ROOT,
    Provenance,
    ProvenanceError,
    checkpoint_digest,
    read_provenance,
)

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
