"""Every tensor of both graphs and of the ensemble, declared once.

A declaration holds the name, the dtype and the shape: static sizes name a config
field (``"n_blocks"``), dynamic ones an :class:`Axis` whose bounds come from the
config. ONNX dynamic shapes (``export/onnx_graphs.py``), ``config.pbtxt`` dims and
input limits (``export/repository.py``), the Python backend's checks (it reads those
limits), TensorRT optimisation profiles (``export/tensorrt_profiles.py``) and the
client's validation are all derived from these declarations.

Shapes: B batch, Nb blocks, Tb block length, S = Nb*Tb user tokens, N candidates,
L layers, H heads, dh head dim, T tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from contract.config import AstroConfig

ENSEMBLE = "astro"
USER_ENCODER = "user_encoder"
ITEM_SCORER = "item_scorer"
GRAPHS = (USER_ENCODER, ITEM_SCORER)

CacheDType = Literal["fp32", "fp16"]
CACHE_DTYPES: tuple[CacheDType, ...] = ("fp32", "fp16")


@dataclass(frozen=True)
class DType:
    """One element type under each runtime's name."""

    name: str
    numpy: type[np.generic]
    triton: str  # Triton's model-config DataType name
    torch: str  # attribute of the torch module (torch stays out of this package)


DTYPES: dict[str, DType] = {
    "int64": DType("int64", np.int64, "TYPE_INT64", "int64"),
    "bool": DType("bool", np.bool_, "TYPE_BOOL", "bool"),
    "fp32": DType("fp32", np.float32, "TYPE_FP32", "float32"),
    "fp16": DType("fp16", np.float16, "TYPE_FP16", "float16"),
}


@dataclass(frozen=True)
class Axis:
    """A dynamic axis: 1 <= size <= ``limit(cfg)``; ``blocks_times`` marks one whose size is
    ``n_blocks`` times another axis's (S = Nb * Tb)."""

    symbol: str  # the ONNX / torch.export dim name, and the key that ties equal axes together
    what: str  # how errors name it
    limit_field: str  # the AstroConfig property that bounds it
    blocks_times: Axis | None = None  # size == cfg.n_blocks * the size of this axis

    def limit(self, cfg: AstroConfig) -> int:
        value: int = getattr(cfg, self.limit_field)
        return value


BATCH = Axis("batch", "batch B", "max_batch_size")
BLOCK_LEN = Axis("block_len", "block length Tb", "max_block_len")
CANDIDATES = Axis("candidates", "candidates N", "max_candidates")
USER_TOKENS = Axis("user_tokens", "user tokens S = Nb*Tb", "max_user_tokens", blocks_times=BLOCK_LEN)

Size = Axis | str | int  # dynamic axis | AstroConfig property | literal


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: str  # a DTYPES key, or "cache" for the export's cache dtype
    shape: tuple[Size, ...]  # batch first
    doc: str

    def resolve(self, cfg: AstroConfig, cache_dtype: CacheDType = "fp32") -> Tensor:
        dims = tuple(s if isinstance(s, Axis | int) else int(getattr(cfg, s)) for s in self.shape)
        return Tensor(self.name, DTYPES[cache_dtype if self.dtype == "cache" else self.dtype], dims, self.doc)


@dataclass(frozen=True)
class Tensor:
    """A declaration resolved against one config: static sizes are numbers."""

    name: str
    dtype: DType
    dims: tuple[Axis | int, ...]
    doc: str

    @property
    def axes(self) -> dict[int, Axis]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, Axis)}

    def triton_dims(self) -> list[int]:
        """config.pbtxt dims: without the batch axis, -1 for a dynamic one."""
        return [-1 if isinstance(d, Axis) else d for d in self.dims[1:]]

    def limits(self, cfg: AstroConfig) -> list[tuple[int, Axis, int]]:
        """(axis index, axis, largest legal size) of each dynamic axis but the batch."""
        return [(i, a, a.limit(cfg)) for i, a in self.axes.items() if a is not BATCH]

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape, each dynamic axis taking ``sizes[axis.symbol]``."""
        return tuple(sizes[d.symbol] if isinstance(d, Axis) else d for d in self.dims)


def axis_sizes(cfg: AstroConfig, batch: int, block_len: int, candidates: int) -> dict[str, int]:
    """Concrete sizes of every axis symbol (S follows from Tb)."""
    return {
        BATCH.symbol: batch,
        BLOCK_LEN.symbol: block_len,
        CANDIDATES.symbol: candidates,
        USER_TOKENS.symbol: cfg.n_blocks * block_len,
    }


def max_sizes(cfg: AstroConfig) -> dict[str, int]:
    return axis_sizes(cfg, cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates)


_HIST = (BATCH, "n_blocks", BLOCK_LEN)
_KV = (BATCH, "n_layers", "n_heads", USER_TOKENS, "head_dim")

# ---- the public ensemble contract: every input INT64, batch first -------------------------
HIST_ITEM_IDS, HIST_BEHAVIORS, HIST_SCENARIOS, HIST_TIMESTAMPS = HISTORY_INPUTS = (
    "hist_item_ids",
    "hist_behaviors",
    "hist_scenarios",
    "hist_timestamps",
)
REQUEST_SCENARIO, REQUEST_TIMESTAMP = REQUEST_INPUTS = ("request_scenario", "request_timestamp")
CANDIDATE_INPUT = "cand_item_ids"
SCORES_OUTPUT = "scores"
# ---- what user_encoder hands item_scorer inside the ensemble -------------------------------
USER_KEYS, USER_VALUES, USER_MASK = CACHE_TENSORS = ("user_keys", "user_values", "user_mask")

TENSORS: dict[str, TensorDecl] = {
    t.name: t
    for t in (
        TensorDecl(HIST_ITEM_IDS, "int64", _HIST, "history item ids per block, newest first, 0 = padding"),
        TensorDecl(HIST_BEHAVIORS, "int64", _HIST, "behaviour id of each event (the behaviors vocabulary)"),
        TensorDecl(HIST_SCENARIOS, "int64", _HIST, "scenario id of each event (the scenarios vocabulary)"),
        TensorDecl(HIST_TIMESTAMPS, "int64", _HIST, "unix seconds of each event"),
        TensorDecl(REQUEST_SCENARIO, "int64", (BATCH, 1), "scenario id of the request"),
        TensorDecl(REQUEST_TIMESTAMP, "int64", (BATCH, 1), "unix seconds of the request"),
        TensorDecl(CANDIDATE_INPUT, "int64", (BATCH, CANDIDATES), "candidate item ids to score"),
        TensorDecl(SCORES_OUTPUT, "fp32", (BATCH, CANDIDATES, "n_tasks"), "per-task probabilities in (0, 1)"),
        TensorDecl(USER_KEYS, "cache", _KV, "per-layer keys of every block, block-major tokens"),
        TensorDecl(USER_VALUES, "cache", _KV, "per-layer values of every block, block-major tokens"),
        TensorDecl(USER_MASK, "bool", (BATCH, USER_TOKENS), "True where a user token is a real event"),
    )
}

# The encoder takes history and scenario only, never the request time: its outputs, and so
# Triton's response-cache key over its inputs, stay the same across a user's requests.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    USER_ENCODER: ((*HISTORY_INPUTS, REQUEST_SCENARIO), CACHE_TENSORS),
    ITEM_SCORER: (
        (CANDIDATE_INPUT, REQUEST_SCENARIO, REQUEST_TIMESTAMP, HIST_TIMESTAMPS, *CACHE_TENSORS),
        (SCORES_OUTPUT,),
    ),
    ENSEMBLE: ((*HISTORY_INPUTS, *REQUEST_INPUTS, CANDIDATE_INPUT), (SCORES_OUTPUT,)),
}


def graph_io(cfg: AstroConfig, graph: str, cache_dtype: CacheDType = "fp32") -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of ``graph`` (a composing model or the ensemble) resolved against ``cfg``."""
    inputs, outputs = GRAPH_IO[graph]
    return [TENSORS[n].resolve(cfg, cache_dtype) for n in inputs], [
        TENSORS[n].resolve(cfg, cache_dtype) for n in outputs
    ]
