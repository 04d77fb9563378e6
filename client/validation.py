"""Checks a request must pass before it is sent to the ``astro`` ensemble.

The rules themselves (the integer rule, int64 bounds, field lists, plausibility, tensor shapes
and limits) live in :mod:`contract.validation`, shared with the block helper and every other
entry point; this module applies them to the client's request types:

- :func:`request_from_json`: one JSON request object (unknown keys refused, missing ones named
  with a hint) -> :class:`ScoreRequest`;
- :func:`validate_request`: one user's :class:`ScoreRequest`, normalised to int64 arrays, with
  the plausibility checks of :class:`~contract.validation.Allow` (the vocabularies once the
  served spec is known). No server limit applies: the client splits long lists and batches;
- :func:`check_served`: the served vocabularies, once the server's spec is known;
- :func:`validate_inputs`: the raw ensemble tensors of one Triton call against the served limits
  (``infer_arrays(..., validate=True)``; a scored request's tensors are built from checked values).

Every error is a :class:`RequestError` (a ``ValueError``) naming the field, the value and the limit.
numpy only: the client must install without torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from contract.blocks import EventHistory
from contract.validation import (
    CONTRACT_INPUTS,
    HISTORY_FIELDS,
    I64,
    OPTIONAL_REQUEST_FIELDS,
    REQUEST_FIELDS,
    Allow,
    RequestError,
    Vocabularies,
    as_int,
    as_int_array,
    check_history,
    check_plausible,
    check_user_id,
    check_vocabularies,
    validate_inputs,
)

__all__ = [
    "CONTRACT_INPUTS",
    "HISTORY_FIELDS",
    "I64",
    "Allow",
    "RequestError",
    "ScoreRequest",
    "request_from_json",
    "validate_inputs",
    "validate_request",
]
NEW_USER_HISTORY = '"history": {"item_ids": [], "behaviors": [], "scenarios": [], "timestamps": []}'


@dataclass(frozen=True)
class ScoreRequest:
    """One user to score: their history, the candidates, the request's scenario and time.

    ``candidates`` is ``[N]`` item ids; ``timestamp`` is unix seconds, as are the
    history's timestamps. After :func:`validate_request`, every array is int64. ``user_id``
    (optional): a caller's stable id; the client then routes every call of this user by it
    (by default, by a hash of the encoder inputs: :mod:`client.routing`).
    """

    history: EventHistory
    candidates: Sequence[int] | I64
    scenario: int
    timestamp: int
    user_id: str | None = None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _history_arrays(history: EventHistory) -> tuple[I64, I64, I64, I64]:
    return history.item_ids, history.behaviors, history.scenarios, history.timestamps


def validate_request(
    request: ScoreRequest, field: str = "", *, allow: Allow | None = None, vocab: Vocabularies | None = None
) -> ScoreRequest:
    """A copy of ``request`` with int64 arrays and int scalars; :class:`RequestError` otherwise.

    Item ids and candidates are any int64 (the graphs hash them, negative ones too); a history
    event with item id 0 (the padding id), a timestamp outside ``[0, 2100)`` in unix seconds and,
    given ``vocab``, a behaviour or scenario id outside the served vocabularies are refused
    unless ``allow`` lets them through. ``field`` prefixes the names in error messages
    (``"requests[3]"`` gives ``requests[3].candidates: ...``).
    """
    if not isinstance(request, ScoreRequest):
        raise RequestError(field or "request", f"must be a ScoreRequest, got {type(request).__name__}")
    hfield = _join(field, "history")
    if not isinstance(request.history, EventHistory):
        raise RequestError(hfield, f"must be a contract.blocks.EventHistory, got {type(request.history).__name__}")
    history = check_history(hfield, *_history_arrays(request.history))
    out = ScoreRequest(
        history=EventHistory(*history),
        candidates=as_int_array(_join(field, "candidates"), request.candidates, ndim=1, allow_empty=False),
        scenario=as_int(_join(field, "scenario"), request.scenario),
        timestamp=as_int(_join(field, "timestamp"), request.timestamp),
        user_id=check_user_id(_join(field, "user_id"), request.user_id),
    )
    allow = allow if allow is not None else Allow()
    check_plausible(field, history, out.timestamp, allow)
    if vocab is not None:
        check_vocabularies(field, history, out.scenario, vocab, allow)
    return out


def check_served(request: ScoreRequest, field: str, vocab: Vocabularies, allow: Allow) -> None:
    """The served-vocabulary checks of a request already through :func:`validate_request`."""
    check_vocabularies(field, _history_arrays(request.history), request.scenario, vocab, allow)


def _refuse_unknown(field: str, obj: dict[str, Any], known: Collection[str], what: str) -> None:
    unknown = [k for k in obj if k not in known]
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), list(known), n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise RequestError(field, f"unknown field {', '.join(parts)}; {what} holds exactly {', '.join(known)}")


def request_from_json(obj: Any, field: str = "") -> ScoreRequest:
    """One decoded JSON request object -> :class:`ScoreRequest` by the integer rule; unknown keys refused.

    ``{"history": {"item_ids", "behaviors", "scenarios", "timestamps"}, "candidates", "scenario",
    "timestamp"}`` and optionally ``"user_id"`` (a string); ``field`` prefixes the names in error
    messages (``requests[2]`` for a list entry).
    """
    where = field or "request"
    if not isinstance(obj, dict):
        raise RequestError(where, f"must be a JSON object, got {type(obj).__name__}")
    _refuse_unknown(where, obj, REQUEST_FIELDS + OPTIONAL_REQUEST_FIELDS, "a request")
    missing = [k for k in REQUEST_FIELDS if k not in obj]
    if missing:
        hint = f" (a new user with no history is {NEW_USER_HISTORY})" if "history" in missing else ""
        raise RequestError(where, f"lacks keys {missing}{hint}")
    hfield = _join(field, "history")
    hist = obj["history"]
    if not isinstance(hist, dict):
        hint = f" (a new user with no history is {NEW_USER_HISTORY})" if hist in ([], None, {}) else ""
        raise RequestError(hfield, f"must be a JSON object of four lists, got {type(hist).__name__}{hint}")
    _refuse_unknown(hfield, hist, HISTORY_FIELDS, "a history")
    lacking = [k for k in HISTORY_FIELDS if k not in hist]
    if lacking:
        raise RequestError(hfield, f"lacks keys {lacking} (use [] for each field of a user with no history)")
    history = check_history(hfield, *(hist[k] for k in HISTORY_FIELDS))
    return ScoreRequest(
        EventHistory(*history),
        as_int_array(_join(field, "candidates"), obj["candidates"], ndim=1, allow_empty=False),
        as_int(_join(field, "scenario"), obj["scenario"]),
        as_int(_join(field, "timestamp"), obj["timestamp"]),
        check_user_id(_join(field, "user_id"), obj.get("user_id")),
    )
