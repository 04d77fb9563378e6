"""A batch of users' requests in the ensemble's input layout, and its torch view for the model.

One type from end to end: the training datasets (:class:`model.synthetic.Dataset` adds labels),
the random requests of the parity checks and the benchmarks, and the tests all hold a
:class:`RequestBatch`; it becomes the model's ``(History, Request, candidates)`` only at the
torch edge, :meth:`RequestBatch.to_torch`, and the graphs' feeds by :meth:`RequestBatch.graph_inputs`.

numpy only: torch is imported by :meth:`RequestBatch.to_torch` when it is called, so a client
that imports this module never loads it.

Shapes (each array int64, batch first, as ``contract.tensors`` declares the ensemble inputs):
B users, Nb blocks, Tb block length, N candidates.

* ``hist_item_ids``, ``hist_behaviors``, ``hist_scenarios``, ``hist_timestamps``: ``[B, Nb, Tb]``
  (newest first, right-padded with item id 0);
* ``request_scenario``, ``request_timestamp``: ``[B, 1]``;
* ``cand_item_ids``: ``[B, N]``.

Construction checks the structure only (dtypes, ranks, axes that agree across arrays), never
the served limits: a batch may hold what a server must refuse, which is how tests build one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from contract.blocks import I64, BlockLayout, EventHistory, stack_blocks
from contract.tensors import CACHE_TENSORS, ENSEMBLE, GRAPH_IO, ITEM_SCORER, TENSORS, USER_ENCODER, Axis

if TYPE_CHECKING:
    import torch
    from torch import Tensor

INPUTS = GRAPH_IO[ENSEMBLE][0]  # the seven ensemble inputs, in the ensemble's order
_Batch = TypeVar("_Batch", bound="RequestBatch")  # typing.Self is 3.11+; the client runs on 3.10


class History(NamedTuple):
    """The history block tensors as the model takes them, each ``[B, Nb, Tb]`` int64, newest first."""

    item_ids: Tensor
    behaviors: Tensor
    scenarios: Tensor
    timestamps: Tensor  # unix seconds


class Request(NamedTuple):
    """Per-user request context, each ``[B, 1]`` int64."""

    scenario: Tensor
    timestamp: Tensor  # unix seconds


class TorchBatch(NamedTuple):
    """A :class:`RequestBatch` as torch tensors on one device: unpacks as the model's
    ``(history, request, candidates)``."""

    history: History  # each [B, Nb, Tb] int64
    request: Request  # each [B, 1] int64
    candidates: Tensor  # [B, N] int64

    def encoder_args(self) -> tuple[Tensor, ...]:
        """Positional inputs of the user encoder (``model.astro.UserEncoder``), in its graph's input order."""
        return self._graph_args(USER_ENCODER)

    def scorer_args(self) -> tuple[Tensor, ...]:
        """Positional inputs of the item scorer (``model.astro.ItemScorer``) before the cache, in its graph's order."""
        return self._graph_args(ITEM_SCORER)

    def _graph_args(self, graph: str) -> tuple[Tensor, ...]:
        by_name = dict(
            zip(INPUTS, (*self.history, self.request.scenario, self.request.timestamp, self.candidates), strict=True)
        )
        return tuple(by_name[n] for n in GRAPH_IO[graph][0] if n not in CACHE_TENSORS)


def _label(size: Axis | str | int) -> str:
    """How an axis is written in shapes: ``B``, ``Tb``, ``N`` (an axis's last word), ``Nb``, ``1``."""
    if isinstance(size, Axis):
        return size.what.split()[-1]
    return "Nb" if size == "n_blocks" else str(size)


@dataclass(frozen=True)
class RequestBatch:
    """B users' requests, named like the ensemble inputs; shapes in the module docstring, checked here."""

    hist_item_ids: I64  # [B, Nb, Tb]
    hist_behaviors: I64  # [B, Nb, Tb]
    hist_scenarios: I64  # [B, Nb, Tb]
    hist_timestamps: I64  # [B, Nb, Tb]
    request_scenario: I64  # [B, 1]
    request_timestamp: I64  # [B, 1]
    cand_item_ids: I64  # [B, N]

    def __post_init__(self) -> None:
        """Each array: an int64 numpy array of its declared rank; each axis the same size in every array
        that has it (B everywhere, Nb and Tb across the history, the 1 of the request arrays).
        Raises ``ValueError`` naming the array, its shape and the expected one."""
        bound: dict[str, tuple[str, int]] = {}  # axis label -> (the array that fixed it, its size)
        for name in INPUTS:
            arr, decl = getattr(self, name), TENSORS[name].shape
            expected = "[" + ", ".join(_label(s) for s in decl) + "]"
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int64:
                what = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
                raise ValueError(f"RequestBatch.{name}: {what}, expected an int64 numpy array {expected}")
            if arr.ndim != len(decl):
                raise ValueError(f"RequestBatch.{name}: shape {arr.shape} has rank {arr.ndim}, expected {expected}")
            want = []
            for size, axis in zip(arr.shape, decl, strict=True):
                label = _label(axis)
                want.append(axis if isinstance(axis, int) else bound.setdefault(label, (name, size))[1])
            if tuple(want) != arr.shape:
                fixed = [
                    f"{_label(a)} = {bound[_label(a)][1]} from {bound[_label(a)][0]}"
                    for a, size in zip(decl, arr.shape, strict=True)
                    if not isinstance(a, int) and bound[_label(a)][1] != size
                ]
                raise ValueError(
                    f"RequestBatch.{name}: shape {arr.shape}, expected {expected} = {tuple(want)}"
                    + (f" ({'; '.join(fixed)})" if fixed else "")
                )

    @classmethod
    def from_history(
        cls, history: EventHistory, candidates: npt.ArrayLike, scenario: int, timestamp: int, layout: BlockLayout
    ) -> RequestBatch:
        """One user's flat history as a batch of one, cut into blocks by the client's own helper."""
        b = stack_blocks([history], layout)
        return cls(
            b.item_ids,
            b.behaviors,
            b.scenarios,
            b.timestamps,
            np.array([[scenario]], np.int64),
            np.array([[timestamp]], np.int64),
            np.asarray(candidates, np.int64).reshape(1, -1),
        )

    def __len__(self) -> int:
        """B, the number of users."""
        return int(self.hist_item_ids.shape[0])

    def as_dict(self) -> dict[str, I64]:
        """The seven ensemble inputs by name."""
        return {name: getattr(self, name) for name in INPUTS}

    def graph_inputs(self, graph: str) -> dict[str, I64]:
        """The request inputs ``graph`` takes (a composing model's cache inputs excluded), by the contract."""
        return {n: getattr(self, n) for n in GRAPH_IO[graph][0] if n not in CACHE_TENSORS}

    def take(self: _Batch, rows: npt.ArrayLike) -> _Batch:
        """The users ``rows`` (indices or a boolean mask over B), every array of the batch cut alike
        (a subclass's extra per-user arrays too, such as a dataset's labels)."""
        index = np.asarray(rows)
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def trimmed(self: _Batch) -> _Batch:
        """Tb cut to the longest block any user fills (at least 1): the same requests with less padding."""
        filled = (self.hist_item_ids != 0).sum(-1)  # [B, Nb]
        tb = max(1, int(filled.max(initial=0)))
        return dataclasses.replace(
            self,
            hist_item_ids=self.hist_item_ids[:, :, :tb],
            hist_behaviors=self.hist_behaviors[:, :, :tb],
            hist_scenarios=self.hist_scenarios[:, :, :tb],
            hist_timestamps=self.hist_timestamps[:, :, :tb],
        )

    def to_torch(self, device: torch.device | str = "cpu") -> TorchBatch:
        """The model's ``(History, Request, candidates)`` on ``device``; on the CPU the tensors share the arrays."""
        import torch

        def t(a: I64) -> Tensor:
            return torch.from_numpy(a).to(device)

        return TorchBatch(
            History(t(self.hist_item_ids), t(self.hist_behaviors), t(self.hist_scenarios), t(self.hist_timestamps)),
            Request(t(self.request_scenario), t(self.request_timestamp)),
            t(self.cand_item_ids),
        )
