"""Flat event history -> the ``[Nb, Tb]`` block tensors the graphs take.

numpy only: the client uses this very function, so client and model cannot
disagree on how a history is cut into blocks. A block holds its newest
``max_len`` matching events, newest first (slot t = recency rank t, which is
what the per-block position embedding indexes), right-padded with item id 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.config import BlockSpec

I64 = npt.NDArray[np.int64]
PAD_ITEM = 0  # item id 0 marks a padding slot; real items use any other int64 value


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
        lengths = {len(item_ids), len(behaviors), len(scenarios), len(timestamps)}
        if len(lengths) != 1:
            raise ValueError(
                "history fields must have equal lengths, got "
                f"item_ids={len(item_ids)} behaviors={len(behaviors)} "
                f"scenarios={len(scenarios)} timestamps={len(timestamps)}"
            )
        return cls(*(np.asarray(a, dtype=np.int64).reshape(-1) for a in (item_ids, behaviors, scenarios, timestamps)))

    @classmethod
    def empty(cls) -> EventHistory:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z)

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass(frozen=True)
class BlockTensors:
    """The four history inputs, each ``[Nb, Tb]`` int64 (add the batch axis to send)."""

    item_ids: I64
    behaviors: I64
    scenarios: I64
    timestamps: I64

    @property
    def block_len(self) -> int:
        return int(self.item_ids.shape[1])


def block_lengths(history: EventHistory, blocks: Sequence[BlockSpec]) -> list[int]:
    """How many events each block keeps (padding items excluded)."""
    valid = history.item_ids != PAD_ITEM
    return [min(b.max_len, int(np.count_nonzero(valid & _keeps(b, history.behaviors)))) for b in blocks]


def build_blocks(history: EventHistory, blocks: Sequence[BlockSpec], block_len: int | None = None) -> BlockTensors:
    """Cut ``history`` into ``[Nb, Tb]`` tensors.

    ``block_len`` (Tb) defaults to the longest block this history fills (at least 1,
    so a user with no history still yields a valid all-padding request); pass a
    common value to stack several users into one batch. Events with item id 0 are
    dropped (0 is the padding id). Ties in timestamp keep the later event first.
    """
    need = max([1, *block_lengths(history, blocks)])
    tb = need if block_len is None else block_len
    if tb < need:
        raise ValueError(f"block_len={tb} is below the {need} events this history fills in one block")
    out = np.zeros((4, len(blocks), tb), dtype=np.int64)
    valid = history.item_ids != PAD_ITEM
    # newest first; stable on the reversed index so that, at equal timestamps, later events come first
    order = np.argsort(-history.timestamps[::-1], kind="stable")
    order = (len(history) - 1 - order).astype(np.int64)
    fields = np.stack([history.item_ids, history.behaviors, history.scenarios, history.timestamps])
    for bi, spec in enumerate(blocks):
        keep = order[(valid & _keeps(spec, history.behaviors))[order]][: spec.max_len]
        out[:, bi, : keep.shape[0]] = fields[:, keep]
    return BlockTensors(out[0], out[1], out[2], out[3])


def stack_blocks(users: Sequence[EventHistory], blocks: Sequence[BlockSpec]) -> BlockTensors:
    """Block tensors for several users, ``[B, Nb, Tb]`` with one shared Tb."""
    if not users:
        raise ValueError("stack_blocks needs at least one user")
    tb = max(max([1, *block_lengths(h, blocks)]) for h in users)
    per_user = [build_blocks(h, blocks, tb) for h in users]
    return BlockTensors(
        *(np.stack([getattr(u, f) for u in per_user]) for f in ("item_ids", "behaviors", "scenarios", "timestamps"))
    )


def _keeps(spec: BlockSpec, behaviors: I64) -> npt.NDArray[np.bool_]:
    return np.fromiter((spec.keeps(int(b)) for b in behaviors), dtype=bool, count=behaviors.shape[0])
