"""The block helper: flat event history -> ``[Nb, Tb]`` tensors, shared by the client and the model.

Hand-built histories for each rule (newest first, behaviour filter, truncation, padding,
shared Tb, validation), and a plain-Python reference that the vectorised helper must
match on random histories, unknown behaviour ids and timestamp ties included.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.blocks import (
    PAD_ITEM,
    BlockTensors,
    EventHistory,
    _keeps,
    block_lengths,
    build_blocks,
    stack_blocks,
)
from contract.config import BEHAVIORS, AstroConfig, BlockSpec

REPO = Path(__file__).resolve().parents[1]
CFG = AstroConfig.from_name("tiny")  # play: {play} 12, like: {like, share} 6, recent: all 4
PLAY, LIKE, SHARE, SKIP = (BEHAVIORS.index(b) for b in ("play", "like", "share", "skip"))
FIELDS = ("item_ids", "behaviors", "scenarios", "timestamps")
SEED = 20250214


def hist(
    items: list[int], behaviors: list[int], timestamps: list[int], scenarios: list[int] | None = None
) -> EventHistory:
    return EventHistory.from_lists(items, behaviors, scenarios or [0] * len(items), timestamps)


def reference_blocks(h: EventHistory, blocks: tuple[BlockSpec, ...], tb: int) -> BlockTensors:
    """The rules spelled out one event at a time, with ``BlockSpec.keeps`` as the filter."""
    events = list(zip(*(getattr(h, f).tolist() for f in FIELDS), strict=True))
    # newest first; at equal timestamps the later event (higher index) first
    ranked = sorted(range(len(events)), key=lambda i: (-events[i][3], -i))
    out = np.zeros((4, len(blocks), tb), dtype=np.int64)
    for bi, spec in enumerate(blocks):
        kept = [i for i in ranked if events[i][0] != PAD_ITEM and spec.keeps(events[i][1])][: spec.max_len]
        for t, i in enumerate(kept):
            out[:, bi, t] = events[i]
    return BlockTensors(out[0], out[1], out[2], out[3])


def assert_blocks_equal(a: BlockTensors, b: BlockTensors) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def random_history(rng: np.random.Generator, n: int) -> EventHistory:
    return EventHistory(
        item_ids=rng.integers(0, 6, n),  # many padding ids (0) and repeats
        behaviors=rng.integers(-2, 7, n),  # unknown ids on both sides
        scenarios=rng.integers(0, 4, n),
        timestamps=rng.integers(0, 40, n),  # plenty of ties
    )


# ---- the rules ------------------------------------------------------------------------------


def test_newest_first_with_fields_kept_together() -> None:
    h = hist([11, 12, 13, 14], [PLAY] * 4, [100, 400, 200, 300], scenarios=[1, 2, 3, 0])
    b = build_blocks(h, CFG.blocks)
    np.testing.assert_array_equal(b.item_ids[0, :4], [12, 14, 13, 11])
    np.testing.assert_array_equal(b.timestamps[0, :4], [400, 300, 200, 100])
    np.testing.assert_array_equal(b.scenarios[0, :4], [2, 0, 3, 1])
    np.testing.assert_array_equal(b.behaviors[0, :4], [PLAY] * 4)


def test_equal_timestamps_keep_later_event_first() -> None:
    h = hist([1, 2, 3], [PLAY] * 3, [50, 50, 50])
    np.testing.assert_array_equal(build_blocks(h, CFG.blocks).item_ids[0, :3], [3, 2, 1])


def test_behaviour_filter_per_block() -> None:
    items = [1, 2, 3, 4, 5, 6]
    behaviors = [PLAY, LIKE, SHARE, SKIP, -1, 99]  # -1, 99: unknown behaviours
    b = build_blocks(hist(items, behaviors, [6, 5, 4, 3, 2, 1]), CFG.blocks)
    assert b.block_len == 4  # the "recent" block keeps every event, truncated to its max_len 4
    np.testing.assert_array_equal(b.item_ids[0], [1, 0, 0, 0])  # play: {play}
    np.testing.assert_array_equal(b.item_ids[1], [2, 3, 0, 0])  # like: {like, share}
    np.testing.assert_array_equal(b.item_ids[2], [1, 2, 3, 4])  # recent: all, unknown ones too (beyond max_len)
    only_unknown = build_blocks(hist([7, 8], [-1, 99], [2, 1]), CFG.blocks)
    np.testing.assert_array_equal(only_unknown.item_ids, [[0, 0], [0, 0], [7, 8]])


def test_max_len_keeps_the_newest() -> None:
    n = 30
    h = hist(list(range(1, n + 1)), [LIKE] * n, list(range(n)))  # item k at time k-1: item 30 is newest
    b = build_blocks(h, CFG.blocks)
    assert b.block_len == 6  # like: max_len 6; recent: 4; play: none
    np.testing.assert_array_equal(b.item_ids[1], [30, 29, 28, 27, 26, 25])
    np.testing.assert_array_equal(b.item_ids[2, :4], [30, 29, 28, 27])
    np.testing.assert_array_equal(b.item_ids[0], np.zeros(6))
    assert block_lengths(h, CFG.blocks) == [0, 6, 4]


def test_padding_items_are_dropped() -> None:
    h = hist([0, 5, 0, 6], [PLAY] * 4, [400, 300, 200, 100], scenarios=[3, 1, 3, 2])
    b = build_blocks(h, CFG.blocks)
    assert b.block_len == 2 and block_lengths(h, CFG.blocks) == [2, 0, 2]
    np.testing.assert_array_equal(b.item_ids[0], [5, 6])
    np.testing.assert_array_equal(b.scenarios[0], [1, 2])  # the padding events' fields went with them


def test_empty_history_is_one_padding_slot() -> None:
    for h in (EventHistory.empty(), hist([], [], []), hist([0, 0], [PLAY, LIKE], [1, 2])):
        b = build_blocks(h, CFG.blocks)
        assert b.item_ids.shape == (CFG.n_blocks, 1)
        for f in FIELDS:
            assert getattr(b, f).dtype == np.int64
            np.testing.assert_array_equal(getattr(b, f), 0, err_msg=f)


def test_explicit_block_len() -> None:
    h = hist([1, 2, 3], [PLAY, PLAY, LIKE], [3, 2, 1])
    b = build_blocks(h, CFG.blocks, block_len=CFG.max_block_len)
    assert b.item_ids.shape == (CFG.n_blocks, CFG.max_block_len)
    np.testing.assert_array_equal(b.item_ids[0, :3], [1, 2, 0])
    with pytest.raises(ValueError, match=r"block_len=2 is below the 3 events"):
        build_blocks(h, CFG.blocks, block_len=2)  # "recent" holds 3 events
    with pytest.raises(ValueError, match=r"block_len=0"):
        build_blocks(EventHistory.empty(), CFG.blocks, block_len=0)


def test_stack_blocks_shares_tb() -> None:
    users = [
        EventHistory.empty(),
        hist([1, 2], [PLAY, SHARE], [2, 1]),
        hist(list(range(1, 10)), [PLAY] * 9, list(range(9))),
    ]
    s = stack_blocks(users, CFG.blocks)
    assert s.item_ids.shape == (3, CFG.n_blocks, 9) and s.block_len == 9
    for u, h in enumerate(users):
        one = build_blocks(h, CFG.blocks, block_len=9)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(s, f)[u], getattr(one, f), err_msg=f"user {u} {f}")
    assert stack_blocks([EventHistory.empty()] * 2, CFG.blocks).item_ids.shape == (2, CFG.n_blocks, 1)
    with pytest.raises(ValueError, match="at least one user"):
        stack_blocks([], CFG.blocks)


# ---- the vectorised helper == the one-event-at-a-time reference --------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_matches_reference(preset: str) -> None:
    blocks = AstroConfig.from_name(preset).blocks
    rng = np.random.default_rng([SEED, len(preset)])
    users = [random_history(rng, int(n)) for n in rng.integers(0, 200, 40)]
    for h in users:
        got = build_blocks(h, blocks)
        assert_blocks_equal(got, reference_blocks(h, blocks, got.block_len))
        assert got.block_len == max(1, *block_lengths(h, blocks))
    stacked = stack_blocks(users, blocks)
    tb = stacked.block_len
    for u, h in enumerate(users):
        ref = reference_blocks(h, blocks, tb)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(stacked, f)[u], getattr(ref, f), err_msg=f"user {u} {f}")


def test_keeps_matches_blockspec() -> None:
    ids = np.arange(-3, len(BEHAVIORS) + 3, dtype=np.int64)
    ids = np.concatenate([ids, np.array([-(2**63), 2**63 - 1, 10**9], dtype=np.int64)])
    specs = [*CFG.blocks, BlockSpec("skips", ("skip",), 3), BlockSpec("all_named", BEHAVIORS, 3)]
    for spec in specs:
        np.testing.assert_array_equal(_keeps(spec, ids), [spec.keeps(int(i)) for i in ids], err_msg=spec.name)


def test_blocks_module_is_torch_free() -> None:
    code = "import sys, contract.blocks, contract.config; assert 'torch' not in sys.modules, 'contract imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---- EventHistory.from_lists validation ----------------------------------------------------------


def test_from_lists_accepts_integers() -> None:
    # numpy scalars, small unsigned arrays and integral floats (JSON) are integers too
    numpy_scalars: Any = (np.int32(0), 3)
    uint8: Any = np.array([1, 2], dtype=np.uint8)
    floats: Any = [1.7e9, -(2**63)]
    h = EventHistory.from_lists([1, 2**63 - 1], numpy_scalars, uint8, floats)
    for f in FIELDS:
        assert getattr(h, f).dtype == np.int64 and getattr(h, f).shape == (2,)
    assert h.timestamps.tolist() == [1_700_000_000, -(2**63)]  # an integral float is an integer
    assert len(EventHistory.from_lists([], [], [], [])) == 0


GOOD = [1, 2]
BAD_VALUES: list[tuple[Any, str]] = [
    ([1, 2.5], r"element 1: 2.5 is not an integer"),
    ([1, float("nan")], r"element 1: nan is not an integer"),
    ([True, 2], r"element 0: True is a bool"),
    (np.array([True, False]), r"element 0: .*True.* is a bool"),
    (["1", 2], r"element 0: '1' is str"),
    ("12", r"must be a flat sequence of integers, got str"),
    ([[1], [2]], r"element 0: \[1\] is a nested sequence"),
    (np.array([[1], [2]]), r"must be 1-D, got an array of shape \(2, 1\)"),
    ([1, 2**63], r"element 1: 9223372036854775808 is outside int64"),
    (np.array([1, 2**64 - 1], dtype=np.uint64), r"outside int64"),
    ([1, None], r"element 1: None is NoneType"),
    (5, r"must be a flat sequence of integers, got int"),
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("bad", "message"), BAD_VALUES)
def test_from_lists_rejects_non_integers(field: str, bad: Any, message: str) -> None:
    kwargs: dict[str, Any] = dict.fromkeys(FIELDS, GOOD)
    kwargs[field] = bad
    with pytest.raises(ValueError, match=f"history field '{field}'") as err:
        EventHistory.from_lists(**kwargs)
    assert re.search(message, str(err.value)), f"{err.value!s} does not match {message!r}"


def test_from_lists_unequal_lengths_names_every_field() -> None:
    with pytest.raises(ValueError, match=r"item_ids=2 behaviors=1 scenarios=2 timestamps=2"):
        EventHistory.from_lists([1, 2], [0], [0, 0], [1, 2])
