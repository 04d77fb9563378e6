"""The TensorRT optimization profile of each graph, derived only from the tensor declarations.

Each graph gets one profile: a (min, opt, max) shape per input, from the declarations of
``contract/tensors.py`` and the limits of :class:`~contract.config.AstroConfig`, handed to
Polygraphy as a :class:`polygraphy.backend.trt.Profile` (:func:`polygraphy_profile`). Polygraphy
refuses a profile naming an input the parsed network lacks, and a network input the profile
omits, so the ONNX graph's input names are checked against the declarations at build time.

Shapes: B batch, Nb = cfg.n_blocks, Tb <= cfg.max_block_len, S = Nb*Tb,
L layers, H heads, dh head dim, N <= cfg.max_candidates, T = n_tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from contract.config import AstroConfig
from contract.tensors import (
    BATCH,
    BLOCK_LEN,
    CACHE_DTYPES,
    CANDIDATES,
    GRAPH_IO,
    GRAPHS,
    TENSORS,
    USER_TOKENS,
    Axis,
    Tensor,
    graph_io,
)


class ShapeRange(NamedTuple):
    """The (min, opt, max) dims of one tensor over the profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


class _Dims(NamedTuple):
    """(min, opt, max) of one symbolic dimension."""

    min: int
    opt: int
    max: int


def _axis_dims(cfg: AstroConfig) -> dict[str, _Dims]:
    """(min, opt, max) of every dynamic axis of the tensor declarations.

    Minimum 1 everywhere (one user, a history cut to one slot per block, one candidate).
    Maximum: the config's limits, which Triton's ``max_batch_size`` and the client share.
    Opt (the shape TensorRT tunes its kernels for; every shape in [min, max] still runs):

    * B: half of ``max_batch_size``, rounded up: Triton's dynamic batcher fills batches
      partly at moderate load; tuning for the middle of the range hedges both ends.
    * Tb: ``max_block_len``: a request is padded to its longest block, and an active
      user's longest block (the play history) is full, so full Tb is the common case.
    * N: half of ``max_candidates``, rounded up, for the same reason as B.

    S is always Nb * Tb (the encoder flattens Nb blocks of Tb tokens), at every point.
    """
    nb = cfg.n_blocks
    tb = _Dims(1, cfg.max_block_len, cfg.max_block_len)
    return {
        BATCH.symbol: _Dims(1, math.ceil(cfg.max_batch_size / 2), cfg.max_batch_size),
        BLOCK_LEN.symbol: tb,
        USER_TOKENS.symbol: _Dims(nb * tb.min, nb * tb.opt, nb * tb.max),
        CANDIDATES.symbol: _Dims(1, math.ceil(cfg.max_candidates / 2), cfg.max_candidates),
    }


def _ranges(cfg: AstroConfig, tensors: Sequence[Tensor]) -> dict[str, ShapeRange]:
    dims = _axis_dims(cfg)
    ranges = {}
    for t in tensors:
        axes = [dims[d.symbol] if isinstance(d, Axis) else _Dims(d, d, d) for d in t.dims]  # static: min=opt=max
        ranges[t.name] = ShapeRange(*(tuple(getattr(a, point) for a in axes) for point in _Dims._fields))
    return ranges


def _check_graph(graph: str) -> None:
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")


def profile_shapes(cfg: AstroConfig, graph: str) -> dict[str, ShapeRange]:
    """The optimization profile of ``graph``: (min, opt, max) for every input, in declaration order."""
    _check_graph(graph)
    return _ranges(cfg, graph_io(cfg, graph)[0])


def output_shapes(cfg: AstroConfig, graph: str) -> dict[str, ShapeRange]:
    """The shapes each graph's outputs take over the profile (what the next step receives)."""
    _check_graph(graph)
    return _ranges(cfg, graph_io(cfg, graph)[1])


def polygraphy_profile(cfg: AstroConfig, graph: str) -> Any:
    """:func:`profile_shapes` as the ``polygraphy.backend.trt.Profile`` that ``CreateConfig(profiles=[...])`` takes."""
    from polygraphy.backend.trt import Profile  # the export imports this module; Polygraphy only builds

    profile = Profile()
    for name, rng in profile_shapes(cfg, graph).items():
        profile.add(name, min=rng.min, opt=rng.opt, max=rng.max)
    return profile


TRT_DTYPE_NAMES = {"int64": "INT64", "bool": "BOOL", "fp32": "FLOAT", "fp16": "HALF"}  # contract -> tensorrt.DataType
CACHE_DTYPE_NAMES = {TRT_DTYPE_NAMES[d]: d for d in CACHE_DTYPES}  # tensorrt.DataType name -> the cache dtype


def expected_dtypes(graph: str) -> dict[str, frozenset[str]]:
    """Allowed ``tensorrt.DataType`` names of every I/O tensor (the cache: any cache dtype).

    A strongly typed engine's I/O types are the ONNX graph's: INT64 ids and a BOOL mask are native
    TensorRT types since 10.0, so the engine takes them as the ensemble routes them.
    """
    _check_graph(graph)
    inputs, outputs = GRAPH_IO[graph]
    cache = frozenset(CACHE_DTYPE_NAMES)
    return {
        t.name: cache if t.dtype == "cache" else frozenset({TRT_DTYPE_NAMES[t.dtype]})
        for t in (TENSORS[n] for n in (*inputs, *outputs))
    }
