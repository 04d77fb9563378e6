"""Flat event history -> the ``[Nb, Tb]`` block tensors the graphs take.

numpy only: the client uses this very function, so client and model cannot
disagree on how a history is cut into blocks. A block holds its newest
``max_len`` matching events, newest first (slot t = recency rank t, which is
what the relative position bias measures distances in), right-padded with item id 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contract.config import BlockSpec
from contract.validation import HISTORY_FIELDS, PAD_ITEM, check_history

I64 = npt.NDArray[np.int64]
FIELDS = HISTORY_FIELDS
__all__ = [
    "FIELDS",
    "I64",
    "PAD_ITEM",
    "BlockLayout",
    "BlockTensors",
    "EventHistory",
    "block_lengths",
    "build_blocks",
    "stack_blocks",
]


class BlockLayout(Protocol):
    """What cutting a history into blocks needs: the blocks and the behaviour vocabulary their
    ``behaviors`` name. Both the model config and the served spec are one."""

    @property
    def blocks(self) -> tuple[BlockSpec, ...]: ...

    @property
    def behaviors(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class EventHistory:
    """One user's events as four equal-length int64 arrays (any order)."""

    item_ids: I64
    behaviors: I64
    scenarios: I64
    timestamps: I64  # unix seconds

    @classmethod
    def from_lists(
        cls, item_ids: Sequence[int], behaviors: Sequence[int], scenarios: Sequence[int], timestamps: Sequence[int]
    ) -> EventHistory:
        """Validate and convert four flat sequences of integers (lists, tuples or 1-D integer arrays).

        The integer rule of :mod:`contract.validation`, as for every entry point: ``RequestError``
        (a ``ValueError``) naming the field (``history.<name>``), the element's index and value for
        anything that is not an int64 integer: floats (``3.0`` too), bools, strings, nested
        lists, values outside int64; and for fields of unequal lengths.
        """
        return cls(*check_history("history", item_ids, behaviors, scenarios, timestamps))

    @classmethod
    def empty(cls) -> EventHistory:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z)

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass(frozen=True)
class BlockTensors:
    """The four history inputs, each ``[Nb, Tb]`` int64 (add the batch axis to send), or ``[B, Nb, Tb]`` stacked."""

    item_ids: I64
    behaviors: I64
    scenarios: I64
    timestamps: I64

    @property
    def block_len(self) -> int:
        """Tb: the last axis, with or without the batch axis."""
        return int(self.item_ids.shape[-1])


def block_lengths(history: EventHistory, layout: BlockLayout) -> list[int]:
    """How many events each block keeps (padding items excluded)."""
    valid = history.item_ids != PAD_ITEM
    return [
        min(b.max_len, int(np.count_nonzero(valid & _keeps(b, layout.behaviors, history.behaviors))))
        for b in layout.blocks
    ]


def build_blocks(history: EventHistory, layout: BlockLayout, block_len: int | None = None) -> BlockTensors:
    """Cut ``history`` into ``[Nb, Tb]`` tensors.

    ``block_len`` (Tb) defaults to the longest block this history fills (at least 1,
    so a user with no history still yields a valid all-padding request); pass a
    common value to stack several users into one batch. Events with item id 0 are
    dropped (0 is the padding id). Ties in timestamp keep the later event first.
    """
    members = _block_members(history, layout)
    need = _needed_len(members)
    tb = need if block_len is None else block_len
    if tb < need:
        raise ValueError(f"block_len={tb} is below the {need} events this history fills in one block")
    return _fill(history, members, tb)


def stack_blocks(users: Sequence[EventHistory], layout: BlockLayout) -> BlockTensors:
    """Block tensors for several users, ``[B, Nb, Tb]`` with one shared Tb."""
    if not users:
        raise ValueError("stack_blocks needs at least one user")
    members = [_block_members(h, layout) for h in users]  # each user's blocks selected once
    tb = max(_needed_len(m) for m in members)
    per_user = [_fill(h, m, tb) for h, m in zip(users, members, strict=True)]
    return BlockTensors(*(np.stack([getattr(u, f) for u in per_user]) for f in FIELDS))


def _keeps(spec: BlockSpec, vocabulary: Sequence[str], behaviors: I64) -> npt.NDArray[np.bool_]:
    """Which events ``spec`` keeps by behaviour: id i is ``vocabulary[i]``; unknown ids only in all-keeping blocks."""
    if not spec.behaviors:
        return np.ones(behaviors.shape, dtype=bool)
    kept_ids = [i for i, name in enumerate(vocabulary) if name in spec.behaviors]
    return np.isin(behaviors, kept_ids)


def _block_members(history: EventHistory, layout: BlockLayout) -> list[I64]:
    """Per block, the indices of the events it holds, newest first, at most ``max_len``."""
    valid = history.item_ids != PAD_ITEM
    # newest first; stable on the reversed index so that, at equal timestamps, later events come first
    order = np.argsort(-history.timestamps[::-1], kind="stable")
    order = (len(history) - 1 - order).astype(np.int64)
    keeps = [_keeps(spec, layout.behaviors, history.behaviors) for spec in layout.blocks]
    return [order[(valid & keep)[order]][: spec.max_len] for spec, keep in zip(layout.blocks, keeps, strict=True)]


def _needed_len(members: Sequence[I64]) -> int:
    """The smallest Tb that holds every block (at least 1: a user with no history is one padding slot)."""
    return max([1, *(int(m.shape[0]) for m in members)])


def _fill(history: EventHistory, members: Sequence[I64], tb: int) -> BlockTensors:
    out = np.zeros((4, len(members), tb), dtype=np.int64)  # [field, Nb, Tb], zeros = padding
    fields = np.stack([history.item_ids, history.behaviors, history.scenarios, history.timestamps])
    for bi, keep in enumerate(members):
        out[:, bi, : keep.shape[0]] = fields[:, keep]
    return BlockTensors(out[0], out[1], out[2], out[3])
