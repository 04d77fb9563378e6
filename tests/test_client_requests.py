"""One user's request, checked before anything is sent: the integer rule, likely mistakes (refused unless
allowed), JSON requests; every error names the field, the value and the limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from client_samples import (
    I64,
    NOW,
    SPEC,
    H,
    cli_request,
    history,
    raises,
    request,
    with_history,
    without,
)

from client import (
    Allow,
    AstroClient,
    EventHistory,
    ScoreRequest,
    request_from_json,
    validate_request,
)
from contract.validation import TIMESTAMP_END

# ---- one request: the integer rule ---------------------------------------------------------


def test_valid_request_is_normalised_to_int64() -> None:
    raw = ScoreRequest(
        EventHistory([5, 6], [0, 1], [2, 3], [10, 20]),  # type: ignore[arg-type]  # lists, as a caller may pass
        [7, 8, 9],
        np.int32(2),  # type: ignore[arg-type]
        NOW,
    )
    req = validate_request(raw)
    assert isinstance(req.candidates, np.ndarray) and req.candidates.dtype == I64
    assert req.candidates.tolist() == [7, 8, 9]
    assert all(getattr(req.history, f).dtype == I64 for f in ("item_ids", "behaviors", "scenarios", "timestamps"))
    assert type(req.scenario) is int and req.scenario == 2


def test_new_user_with_empty_history_lists_is_valid() -> None:
    req = validate_request(ScoreRequest(EventHistory([], [], [], []), [1], 0, 0))  # type: ignore[arg-type]
    assert len(req.history) == 0 and req.history.item_ids.dtype == I64


def test_history_lengths_must_match() -> None:
    h = EventHistory(np.arange(1, 4), np.zeros(2, I64), np.zeros(3, I64), np.zeros(3, I64))
    raises(["history", "item_ids=3", "behaviors=2", "scenarios=3"], validate_request, ScoreRequest(h, [1], 0, 0))


@pytest.mark.parametrize(
    ("field", "bad", "parts"),
    [
        ("item_ids", np.array([1.0, 2.0, 3.0]), ["dtype float64", "element 0: 1.0"]),
        ("behaviors", np.array([True, False, True]), ["dtype bool"]),
        ("scenarios", np.array([1, "x", 2], dtype=object), ["element 1 is 'x' (str)"]),
        ("timestamps", np.array([1.5, 2.5, 3.5], dtype=np.float32), ["dtype float32"]),
        ("timestamps", [NOW, 1.7e9, NOW], ["element 1 is 1700000000.0 (float)", "not 1.7e9"]),
        ("item_ids", [1, True, 3], ["element 1 is True (bool)"]),
    ],
)
def test_history_fields_must_be_ints_not_cast(field: str, bad: Any, parts: list[str]) -> None:
    h = with_history(history(3), **{field: bad})
    raises([f"history.{field}", *parts], validate_request, ScoreRequest(h, [1], 0, 0))


def test_negative_item_ids_are_legal() -> None:
    """Item ids are signed int64 hashed inside the graph: negative ones are valid ids, not errors."""
    h = history(5)
    items = h.item_ids.copy()
    items[3] = -42
    items[4] = -(2**63)
    out = validate_request(ScoreRequest(with_history(h, item_ids=items), [-7, 0, 2**63 - 1], 0, 0))
    assert out.history.item_ids[3] == -42 and list(out.candidates) == [-7, 0, 2**63 - 1]  # candidate 0 is an id


@pytest.mark.parametrize(
    ("candidates", "parts"),
    [
        ([], ["candidates", "must not be empty", "(0,)"]),
        (np.zeros(0, I64), ["candidates", "must not be empty"]),
        ([[1, 2], [3, 4]], ["candidates", "1-D", "(2, 2)"]),
        ([1, 2.5], ["candidates", "element 1 is 2.5 (float)"]),
        ([True, False], ["candidates", "element 0 is True (bool)"]),
        (["abc"], ["candidates", "element 0 is 'abc' (str), not an integer"]),
        (["a", "b"], ["candidates", "element 0 is 'a' (str)"]),
        (np.array([1, 2**63], dtype=np.uint64), ["candidates", str(2**63), "index 1", "int64 maximum"]),
        ([1, 2**70], ["candidates", "element 1 is " + str(2**70), "outside int64"]),
        ([[1], [2, 3]], ["candidates", "cannot be read"]),  # ragged
        ("123", ["candidates", "sequence of integers", "'123' (str)"]),
        (None, ["candidates", "None"]),
    ],
)
def test_candidate_errors_name_field_value_and_limit(candidates: Any, parts: list[str]) -> None:
    raises(parts, validate_request, ScoreRequest(history(), candidates, 0, 0))


@pytest.mark.parametrize(
    ("scenario", "timestamp", "parts"),
    [
        (1.0, 0, ["scenario", "must be an integer", "1.0 (float)"]),
        (True, 0, ["scenario", "True (bool)"]),
        ("home", 0, ["scenario", "'home' (str)"]),
        (None, 0, ["scenario", "None"]),
        (2**63, 0, ["scenario", str(2**63), "int64 maximum"]),
        (0, -1, ["timestamp", "value -1", f"[0, {TIMESTAMP_END})"]),
        (0, 1.7e9, ["timestamp", "1700000000.0 (float)", "not 1.7e9"]),
        (0, np.bool_(True), ["timestamp", "bool"]),
        (0, 2**64, ["timestamp", str(2**64), "int64 maximum"]),
    ],
)
def test_scalar_errors_name_field_value_and_limit(scenario: Any, timestamp: Any, parts: list[str]) -> None:
    raises(parts, validate_request, ScoreRequest(history(), [1], scenario, timestamp))


def test_not_a_history_or_request() -> None:
    raises(["history", "EventHistory", "dict"], validate_request, ScoreRequest({}, [1], 0, 0))  # type: ignore[arg-type]
    raises(["request", "ScoreRequest", "dict"], validate_request, {})


def test_batch_errors_name_the_request_index() -> None:
    batch = [request(), ScoreRequest(history(), [], 0, 0)]
    with AstroClient("127.0.0.1:1", spec=SPEC) as c:  # refused before any connection is tried
        err = raises(["requests[1].candidates", "empty"], c.score_batch, batch)
    assert err.field == "requests[1].candidates"


# ---- one request: likely mistakes, refused unless allowed ----------------------------------------

PLAUSIBILITY: list[tuple[str, ScoreRequest, Allow, list[str]]] = [
    ("milliseconds", ScoreRequest(H, [1], 0, NOW * 1000), Allow(any_timestamp=True),
     ["timestamp", str(NOW * 1000), f"[0, {TIMESTAMP_END})", "milliseconds? divide by 1000", "--allow-any-timestamp"]),
    ("negative request time", ScoreRequest(H, [1], 0, -3), Allow(any_timestamp=True), ["timestamp", "value -3"]),
    ("history in milliseconds", ScoreRequest(with_history(H, timestamps=H.timestamps * 1000), [1], 0, NOW),
     Allow(any_timestamp=True), ["history.timestamps", "at index 0", "(one of 4)", "plausible unix seconds"]),
    ("negative history time", ScoreRequest(with_history(H, timestamps=np.array([5, -5, 6, 7])), [1], 0, NOW),
     Allow(any_timestamp=True), ["history.timestamps", "-5", "index 1"]),
    ("padding item", ScoreRequest(with_history(H, item_ids=np.array([4, 0, 0, 9])), [1], 0, NOW),
     Allow(padding_items=True),
     ["history.item_ids", "value 0 at index 1 is the padding item id (2 in all)", "dropped", "--allow-padding-items"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "req", "allow", "parts"), PLAUSIBILITY, ids=[c[0] for c in PLAUSIBILITY])
def test_likely_mistakes_are_refused_unless_allowed(
    case: str, req: ScoreRequest, allow: Allow, parts: list[str]
) -> None:
    raises(parts, validate_request, req)
    validate_request(req, allow=allow)  # the flag lets exactly this through
    others = Allow(**{k: True for k in ("unknown_ids", "any_timestamp", "padding_items") if not getattr(allow, k)})
    raises(parts[:1], validate_request, req, allow=others)  # and no other flag does


VOCAB: list[tuple[str, ScoreRequest, list[str]]] = [
    ("behaviour", ScoreRequest(with_history(H, behaviors=np.array([0, 1, 4, 3])), [1], 0, NOW),
     ["history.behaviors", "value 4 at index 2", "[0, 4)", "0=play, 1=like, 2=share, 3=skip", "--allow-unknown-ids"]),
    ("negative behaviour", ScoreRequest(with_history(H, behaviors=np.array([0, -1, 1, 3])), [1], 0, NOW),
     ["history.behaviors", "value -1 at index 1"]),
    ("history scenario", ScoreRequest(with_history(H, scenarios=np.array([0, 1, 2, 9])), [1], 0, NOW),
     ["history.scenarios", "value 9 at index 3", "0=home, 1=search, 2=radio, 3=playlist"]),
    ("request scenario", ScoreRequest(H, [1], 12345, NOW), ["scenario", "value 12345 is outside the served scenario"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "req", "parts"), VOCAB, ids=[c[0] for c in VOCAB])
def test_ids_outside_the_served_vocabularies_are_refused_unless_allowed(
    case: str, req: ScoreRequest, parts: list[str]
) -> None:
    validate_request(req)  # without the served spec there is no vocabulary to check
    raises(parts, validate_request, req, vocab=SPEC)
    validate_request(req, vocab=SPEC, allow=Allow(unknown_ids=True))


# ---- JSON requests -------------------------------------------------------------------------------


def test_json_request_reads_integers() -> None:
    req = request_from_json(cli_request(), "requests[0]")
    assert req.candidates.tolist() == [11, 12, 13] and req.scenario == 1  # type: ignore[union-attr]
    assert req.history.item_ids.dtype == I64 and len(req.history) == 4
    new = request_from_json(
        cli_request(history={key: [] for key in ("item_ids", "behaviors", "scenarios", "timestamps")})
    )
    assert len(new.history) == 0


@pytest.mark.parametrize(
    ("obj", "parts"),
    [
        ([], ["request", "JSON object"]),
        ({**without(cli_request(), "candidates"), "candidate": [1]},
         ["request", "unknown field 'candidate' (did you mean 'candidates'?)",
          "history, candidates, scenario, timestamp"]),
        (cli_request(user="u1"), ["request", "unknown field 'user'"]),
        (cli_request(history={**cli_request()["history"], "item_id": [1]}),
         ["history", "unknown field 'item_id' (did you mean 'item_ids'?)"]),
        (without(cli_request(), "history"), ["request", "lacks keys ['history']", "new user", '"item_ids": []']),
        ({"candidates": [1]}, ["request", "lacks keys", "history", "scenario", "timestamp"]),
        (cli_request(history=[]), ["history", "JSON object", "new user", '"timestamps": []']),
        (cli_request(history={"item_ids": []}), ["history", "lacks keys", "behaviors", "use []"]),
        (cli_request(history={"item_ids": [1.5], "behaviors": [0], "scenarios": [0], "timestamps": [1]}),
         ["history.item_ids", "element 0 is 1.5 (float)"]),
        (cli_request(candidates=["abc"]), ["candidates", "element 0 is 'abc' (str), not an integer"]),
        (cli_request(candidates=[1, 2, "3"]), ["candidates", "element 2 is '3' (str)"]),
        (cli_request(candidates=5), ["candidates", "sequence of integers", "5 (int)"]),
        (cli_request(scenario="radio"), ["scenario", "'radio' (str)"]),
        (cli_request(timestamp=1.7e9), ["timestamp", "1700000000.0 (float)", "not 1.7e9"]),
    ],
)  # fmt: skip
def test_json_request_errors(obj: Any, parts: list[str]) -> None:
    raises(parts, request_from_json, obj)


def test_json_errors_in_a_list_name_the_entry() -> None:
    raises(
        ["requests[2].candidates", "element 0 is 'abc'"],
        request_from_json,
        cli_request(candidates=["abc"]),
        "requests[2]",
    )
