"""The raw ensemble tensors of one call (``validate_inputs``, ``infer_arrays(..., validate=True)``): names,
dtypes, shapes against the served limits, plausibility at real history slots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from client_samples import (
    I64,
    NOW,
    SPEC,
    call_inputs,
    raises,
)

from client import (
    Allow,
    validate_inputs,
)

# ---- the raw tensors of one call ---------------------------------------------------------


def test_valid_call_inputs_pass() -> None:
    out = validate_inputs(call_inputs(), SPEC)
    assert set(out) == set(call_inputs()) and all(a.dtype == I64 for a in out.values())


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        (lambda d: d.pop("request_scenario"), ["inputs", "missing ['request_scenario']"]),
        (lambda d: d.update(extra=np.zeros((2, 1), I64)), ["inputs", "unknown ['extra']"]),
        (lambda d: d.update(cand_item_ids=np.ones((2, 3), np.int32)), ["cand_item_ids", "dtype int32", "int64"]),
        (lambda d: d.update(hist_behaviors=np.ones((2, 3, 4))), ["hist_behaviors", "dtype float64", "int64"]),
        (lambda d: d.update(hist_item_ids=np.ones((2, 4), I64)), ["hist_item_ids", "3-D", "(2, 4)"]),
        (lambda d: d.update(request_timestamp=np.ones((3, 1), I64)),
         ["request_timestamp", "batch B = 3", "hist_item_ids's 2"]),
        (lambda d: d.update(request_scenario=np.ones((2, 2), I64)), ["request_scenario", "(2, 2)", "axis 1 is 2", "1"]),
        (lambda d: d.update(hist_scenarios=np.ones((2, 3, 5), I64)),
         ["hist_scenarios", "(2, 3, 5)", "block length Tb = 5", "(2, 3, 4)"]),
        (lambda d: d.update(request_timestamp=np.full((2, 1), -9, I64)), ["request_timestamp", "-9", "index (0, 0)"]),
        (lambda d: d["hist_timestamps"].__setitem__((0, 1, 3), -1), ["hist_timestamps", "-1", "index (0, 1, 3)"]),
        (lambda d: d["hist_timestamps"].__setitem__((1, 0, 0), NOW * 1000), ["hist_timestamps", "milliseconds"]),
        (lambda d: d["hist_behaviors"].__setitem__((0, 2, 1), 7), ["hist_behaviors", "7", "index (0, 2, 1)", "0=play"]),
        (lambda d: d.update(request_scenario=np.full((2, 1), 4, I64)), ["request_scenario", "4", "3=playlist"]),
    ],
)  # fmt: skip
def test_call_input_errors(change: Any, parts: list[str]) -> None:
    d = call_inputs()
    change(d)
    raises(parts, validate_inputs, d, SPEC)


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"batch": SPEC.max_batch_size + 1}, ["hist_item_ids", "batch B = 9", "max_batch_size=8", "score_batch"]),
        ({"nb": SPEC.n_blocks + 1}, ["hist_item_ids", "axis 1 is 4", "n_blocks=3", "'play'"]),
        ({"tb": SPEC.max_block_len + 1}, ["hist_item_ids", "Tb = 13", "max_block_len=12"]),
        ({"tb": 0}, ["hist_item_ids", "Tb = 0"]),
        ({"n": SPEC.max_candidates + 1}, ["cand_item_ids", "N = 513", "max_candidates=512", "chunks"]),
        ({"n": 0}, ["cand_item_ids", "N = 0"]),
    ],
)
def test_call_limits_name_value_and_limit(kwargs: dict[str, int], parts: list[str]) -> None:
    raises(parts, validate_inputs, call_inputs(**kwargs), SPEC)


def test_batch_at_the_limits_is_valid() -> None:
    validate_inputs(call_inputs(batch=SPEC.max_batch_size, tb=SPEC.max_block_len, n=SPEC.max_candidates), SPEC)


def test_padding_slots_are_not_held_to_plausibility() -> None:
    """Padding slots (item id 0) carry behaviour/scenario/timestamp 0 or anything: only real events are checked."""
    d = call_inputs()
    d["hist_item_ids"][0, 1, 3] = 0
    d["hist_behaviors"][0, 1, 3] = 99
    d["hist_timestamps"][0, 1, 3] = -1
    validate_inputs(d, SPEC)
    validate_inputs(call_inputs(), SPEC, Allow())
    d["hist_item_ids"][0, 1, 3] = 5  # a real event now: both its odd values are refused
    raises(["hist_timestamps", "-1"], validate_inputs, d, SPEC)
    raises(["hist_behaviors", "99"], validate_inputs, d, SPEC, Allow(any_timestamp=True))
    validate_inputs(d, SPEC, Allow(unknown_ids=True, any_timestamp=True))
