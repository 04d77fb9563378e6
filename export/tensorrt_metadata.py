"""What a TensorRT plan was built from, on what and how: ``model.plan.json`` beside every plan.

A serialized engine loads only in the TensorRT version that built it, on the GPU architecture it
was built for, so this metadata ties a plan to its container: ``export/repository_check.py``
reads it and refuses a plan whose TensorRT differs from the one the target NGC Triton container
ships (``export/tensorrt_versions.py``). No TensorRT needed to read or write it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.tensorrt_profiles import ShapeRange


def metadata_path(plan_path: Path) -> Path:
    """``.../model.plan`` -> ``.../model.plan.json``."""
    return plan_path.with_name(plan_path.name + ".json")


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine was built from, on what, and how: a plan only runs on the GPU
    architecture and TensorRT version that built it, so these are checked before serving."""

    graph: str
    config_name: str
    precision: str
    cache_dtype: str  # "fp32" | "fp16": dtype of user_keys/user_values, read from the ONNX
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    onnx_file: str
    onnx_sha256: str
    built_at: str  # ISO-8601, UTC
    build_seconds: float
    workspace_gib: float
    profiles: dict[str, ShapeRange]  # the one optimization profile (index 0)
    io_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # engine I/O, DataType names
    fp32_nodes: tuple[str, ...] = ()  # the ONNX graph's fp32 islands (export/precision.py) in a low-precision engine
    network: str = "strongly typed"
    builder: str = ""  # "polygraphy <version>": what drove TensorRT's builder

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profiles"] = {k: v.to_dict() for k, v in self.profiles.items()}
        d["fp32_nodes"] = list(self.fp32_nodes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown engine metadata keys {unknown}; known keys: {sorted(known)}")
        kw = dict(d)
        kw["profiles"] = {k: ShapeRange.from_dict(v) for k, v in d["profiles"].items()}
        kw["fp32_nodes"] = tuple(d.get("fp32_nodes", ()))
        kw["io_dtypes"] = dict(d.get("io_dtypes", {}))
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> EngineMetadata:
        return cls.from_dict(json.loads(text))

    def write(self, plan_path: Path) -> Path:
        path = metadata_path(plan_path)
        atomic_write(path, (self.to_json() + "\n").encode())
        return path

    @classmethod
    def read(cls, plan_path: Path) -> EngineMetadata:
        return cls.from_json(metadata_path(plan_path).read_text())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a truncated plan/cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
