"""The block helper: flat event history -> ``[Nb, Tb]`` tensors, shared by the client and the model.

Hand-built histories for each rule (newest first, behaviour filter by the layout's vocabulary,
truncation, padding, shared Tb, validation by the one integer rule of contract.validation),
and a plain-Python reference that the vectorised helper must match on random histories,
unknown behaviour ids, reordered vocabularies and timestamp ties included.
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
from contract.config import AstroConfig, BlockSpec
from contract.validation import RequestError
from model.random_inputs import random_history

REPO = Path(__file__).resolve().parents[1]
CFG = AstroConfig.from_name("tiny").replace(  # play: {play} 12, like: {like, share} 6, recent: all 4
    blocks=(
        BlockSpec(name="play", behaviors=("play",), max_len=12),
        BlockSpec(name="like", behaviors=("like", "share"), max_len=6),
        BlockSpec(name="recent", behaviors=(), max_len=4),
    )
)
BEHAVIORS = CFG.behaviors
PLAY, LIKE, SHARE, SKIP = (BEHAVIORS.index(b) for b in ("play", "like", "share", "skip"))
FIELDS = ("item_ids", "behaviors", "scenarios", "timestamps")
SEED = 20250214


def hist(
    items: list[int], behaviors: list[int], timestamps: list[int], scenarios: list[int] | None = None
) -> EventHistory:
    return EventHistory.from_lists(items, behaviors, scenarios or [0] * len(items), timestamps)


def keeps(spec: BlockSpec, vocabulary: tuple[str, ...], behavior: int) -> bool:
    """One event, by name: id i is ``vocabulary[i]``; an id outside it is only in all-keeping blocks."""
    if not spec.behaviors:
        return True
    return 0 <= behavior < len(vocabulary) and vocabulary[behavior] in spec.behaviors


def reference_blocks(h: EventHistory, layout: AstroConfig, tb: int) -> BlockTensors:
    """The rules spelled out one event at a time, with :func:`keeps` as the filter."""
    events = list(zip(*(getattr(h, f).tolist() for f in FIELDS), strict=True))
    # newest first; at equal timestamps the later event (higher index) first
    ranked = sorted(range(len(events)), key=lambda i: (-events[i][3], -i))
    out = np.zeros((4, len(layout.blocks), tb), dtype=np.int64)
    for bi, spec in enumerate(layout.blocks):
        kept = [i for i in ranked if events[i][0] != PAD_ITEM and keeps(spec, layout.behaviors, events[i][1])]
        kept = kept[: spec.max_len]
        for t, i in enumerate(kept):
            out[:, bi, t] = events[i]
    return BlockTensors(out[0], out[1], out[2], out[3])


def assert_blocks_equal(a: BlockTensors, b: BlockTensors) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def odd_history(rng: np.random.Generator, n: int) -> EventHistory:
    """Random events in any order with many padding ids (0) and repeats, unknown behaviour ids on both
    sides of the vocabulary and plenty of timestamp ties."""
    return random_history(
        rng, n, CFG, item_ids=(0, 6), behaviors=(-2, 7), scenarios=(0, 4), timestamps=(0, 40), chronological=False
    )


# ---- the rules ------------------------------------------------------------------------------


def test_newest_first_with_fields_kept_together() -> None:
    h = hist([11, 12, 13, 14], [PLAY] * 4, [100, 400, 200, 300], scenarios=[1, 2, 3, 0])
    b = build_blocks(h, CFG)
    np.testing.assert_array_equal(b.item_ids[0, :4], [12, 14, 13, 11])
    np.testing.assert_array_equal(b.timestamps[0, :4], [400, 300, 200, 100])
    np.testing.assert_array_equal(b.scenarios[0, :4], [2, 0, 3, 1])
    np.testing.assert_array_equal(b.behaviors[0, :4], [PLAY] * 4)


def test_equal_timestamps_keep_later_event_first() -> None:
    h = hist([1, 2, 3], [PLAY] * 3, [50, 50, 50])
    np.testing.assert_array_equal(build_blocks(h, CFG).item_ids[0, :3], [3, 2, 1])


def test_behaviour_filter_per_block() -> None:
    items = [1, 2, 3, 4, 5, 6]
    behaviors = [PLAY, LIKE, SHARE, SKIP, -1, 99]  # -1, 99: unknown behaviours
    b = build_blocks(hist(items, behaviors, [6, 5, 4, 3, 2, 1]), CFG)
    assert b.block_len == 4  # the "recent" block keeps every event, truncated to its max_len 4
    np.testing.assert_array_equal(b.item_ids[0], [1, 0, 0, 0])  # play: {play}
    np.testing.assert_array_equal(b.item_ids[1], [2, 3, 0, 0])  # like: {like, share}
    np.testing.assert_array_equal(b.item_ids[2], [1, 2, 3, 4])  # recent: all, unknown ones too (beyond max_len)
    only_unknown = build_blocks(hist([7, 8], [-1, 99], [2, 1]), CFG)
    np.testing.assert_array_equal(only_unknown.item_ids, [[0, 0], [0, 0], [7, 8]])


def test_max_len_keeps_the_newest() -> None:
    n = 30
    h = hist(list(range(1, n + 1)), [LIKE] * n, list(range(n)))  # item k at time k-1: item 30 is newest
    b = build_blocks(h, CFG)
    assert b.block_len == 6  # like: max_len 6; recent: 4; play: none
    np.testing.assert_array_equal(b.item_ids[1], [30, 29, 28, 27, 26, 25])
    np.testing.assert_array_equal(b.item_ids[2, :4], [30, 29, 28, 27])
    np.testing.assert_array_equal(b.item_ids[0], np.zeros(6))
    assert block_lengths(h, CFG) == [0, 6, 4]


def test_padding_items_are_dropped() -> None:
    h = hist([0, 5, 0, 6], [PLAY] * 4, [400, 300, 200, 100], scenarios=[3, 1, 3, 2])
    b = build_blocks(h, CFG)
    assert b.block_len == 2 and block_lengths(h, CFG) == [2, 0, 2]
    np.testing.assert_array_equal(b.item_ids[0], [5, 6])
    np.testing.assert_array_equal(b.scenarios[0], [1, 2])  # the padding events' fields went with them


def test_empty_history_is_one_padding_slot() -> None:
    for h in (EventHistory.empty(), hist([], [], []), hist([0, 0], [PLAY, LIKE], [1, 2])):
        b = build_blocks(h, CFG)
        assert b.item_ids.shape == (CFG.n_blocks, 1)
        for f in FIELDS:
            assert getattr(b, f).dtype == np.int64
            np.testing.assert_array_equal(getattr(b, f), 0, err_msg=f)


def test_explicit_block_len() -> None:
    h = hist([1, 2, 3], [PLAY, PLAY, LIKE], [3, 2, 1])
    b = build_blocks(h, CFG, block_len=CFG.max_block_len)
    assert b.item_ids.shape == (CFG.n_blocks, CFG.max_block_len)
    np.testing.assert_array_equal(b.item_ids[0, :3], [1, 2, 0])
    with pytest.raises(ValueError, match=r"block_len=2 is below the 3 events"):
        build_blocks(h, CFG, block_len=2)  # "recent" holds 3 events
    with pytest.raises(ValueError, match=r"block_len=0"):
        build_blocks(EventHistory.empty(), CFG, block_len=0)


def test_stack_blocks_shares_tb() -> None:
    users = [
        EventHistory.empty(),
        hist([1, 2], [PLAY, SHARE], [2, 1]),
        hist(list(range(1, 10)), [PLAY] * 9, list(range(9))),
    ]
    s = stack_blocks(users, CFG)
    assert s.item_ids.shape == (3, CFG.n_blocks, 9) and s.block_len == 9
    for u, h in enumerate(users):
        one = build_blocks(h, CFG, block_len=9)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(s, f)[u], getattr(one, f), err_msg=f"user {u} {f}")
    assert stack_blocks([EventHistory.empty()] * 2, CFG).item_ids.shape == (2, CFG.n_blocks, 1)
    with pytest.raises(ValueError, match="at least one user"):
        stack_blocks([], CFG)


# ---- the vectorised helper == the one-event-at-a-time reference --------------------------------


REORDERED = AstroConfig.from_name("tiny").replace(behaviors=("like", "play", "skip", "share"))


@pytest.mark.parametrize("layout", [CFG, AstroConfig.from_name("tiny"), AstroConfig.from_name("small"), REORDERED])
def test_matches_reference(layout: AstroConfig) -> None:
    blocks = layout
    rng = np.random.default_rng([SEED, layout.n_blocks, layout.max_block_len])
    print(f"seed [{SEED}, {layout.n_blocks}, {layout.max_block_len}]")
    users = [odd_history(rng, int(n)) for n in rng.integers(0, 200, 40)]
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


def test_keeps_matches_reference() -> None:
    ids = np.arange(-3, len(BEHAVIORS) + 3, dtype=np.int64)
    ids = np.concatenate([ids, np.array([-(2**63), 2**63 - 1, 10**9], dtype=np.int64)])
    specs = [*CFG.blocks, BlockSpec(name="skips", behaviors=("skip",), max_len=3)]
    specs.append(BlockSpec(name="all_named", behaviors=BEHAVIORS, max_len=3))
    for vocab in (BEHAVIORS, REORDERED.behaviors):
        for spec in specs:
            want = [keeps(spec, vocab, int(i)) for i in ids]
            np.testing.assert_array_equal(_keeps(spec, vocab, ids), want, err_msg=f"{spec.name} {vocab}")


def test_events_go_to_blocks_by_the_layouts_vocabulary() -> None:
    """The same ids, two vocabularies: id 0 is "play" in one and "like" in the other, and the
    blocks follow the names, not the ids."""
    h = hist([10, 11, 12, 13], [0, 1, 2, 3], [4, 3, 2, 1])
    default = build_blocks(h, AstroConfig.from_name("tiny"))  # play, like, share, skip
    reordered = build_blocks(h, REORDERED)  # like, play, skip, share
    # blocks: play {play}, like {like, share}, recent (all)
    assert default.item_ids[:, :4].tolist() == [[10, 0, 0, 0], [11, 12, 0, 0], [10, 11, 12, 13]]
    assert reordered.item_ids[:, :4].tolist() == [[11, 0, 0, 0], [10, 13, 0, 0], [10, 11, 12, 13]]


def test_blocks_module_is_torch_free() -> None:
    code = "import sys, contract.blocks, contract.config; assert 'torch' not in sys.modules, 'contract imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---- EventHistory.from_lists: the one integer rule of contract.validation ----------------------


def test_from_lists_accepts_integers() -> None:
    # Python ints, numpy integer scalars and arrays of any integer dtype (within int64) are integers
    numpy_scalars: Any = (np.int32(0), 3)
    uint8: Any = np.array([1, 2], dtype=np.uint8)
    h = EventHistory.from_lists([1, 2**63 - 1], numpy_scalars, uint8, (1_700_000_000, -(2**63)))
    for f in FIELDS:
        assert getattr(h, f).dtype == np.int64 and getattr(h, f).shape == (2,)
    assert h.timestamps.tolist() == [1_700_000_000, -(2**63)]
    assert len(EventHistory.from_lists([], [], [], [])) == 0


GOOD = [1, 2]
BAD_VALUES: list[tuple[Any, str]] = [
    ([1, 2.5], r"element 1 is 2.5 \(float\), not an integer"),
    ([1.0, 2], r"element 0 is 1.0 \(float\), not an integer; write integers"),  # integral floats too
    ([1, 1.7e9], r"element 1 is 1700000000.0 \(float\)"),
    ([1, float("nan")], r"element 1 is nan \(float\), not an integer"),
    ([True, 2], r"element 0 is True \(bool\), not an integer"),
    ([1, np.bool_(False)], r"element 1 is .*False.* \(bool_?\), not an integer"),
    (np.array([True, False]), r"must hold integers, got dtype bool \(element 0: True\)"),
    (np.array([1.0, 2.0]), r"must hold integers, got dtype float64 \(element 0: 1.0\)"),
    (["1", 2], r"element 0 is '1' \(str\), not an integer"),
    (["abc"], r"element 0 is 'abc' \(str\)"),
    ("12", r"must be a 1-D sequence of integers, got '12' \(str\)"),
    ([[1], [2]], r"must be 1-D, got shape \(2, 1\)"),
    ([[1], [2, 3]], r"cannot be read as a 1-D array of integers"),
    (np.array([[1], [2]]), r"must be 1-D, got shape \(2, 1\)"),
    ([1, 2**63], r"element 1 is 9223372036854775808, outside int64"),
    (np.array([1, 2**64 - 1], dtype=np.uint64), r"value 18446744073709551615 at index 1 exceeds the int64 maximum"),
    ([1, None], r"element 1 is None \(NoneType\), not an integer"),
    (5, r"must be a 1-D sequence of integers, got 5 \(int\)"),
    (None, r"must be a 1-D sequence of integers, got None"),
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("bad", "message"), BAD_VALUES)
def test_from_lists_rejects_non_integers(field: str, bad: Any, message: str) -> None:
    kwargs: dict[str, Any] = dict.fromkeys(FIELDS, GOOD)
    kwargs[field] = bad
    with pytest.raises(RequestError, match=f"^history.{field}: ") as err:
        EventHistory.from_lists(**kwargs)
    assert isinstance(err.value, ValueError) and err.value.field == f"history.{field}"
    assert re.search(message, str(err.value)), f"{err.value!s} does not match {message!r}"


def test_from_lists_unequal_lengths_names_every_field() -> None:
    with pytest.raises(ValueError, match=r"item_ids=2 behaviors=1 scenarios=2 timestamps=2"):
        EventHistory.from_lists([1, 2], [0], [0, 0], [1, 2])
