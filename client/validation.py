"""Checks a request must pass before it is sent to the ``astro`` ensemble.

Two levels, both raising :class:`RequestError` (a ``ValueError``) whose message names
the field, the offending value and the limit:

- :func:`validate_request`: one user's :class:`ScoreRequest` (history, candidates,
  request scenario and time), normalised to int64 arrays. No server limit applies
  here: long candidate lists and large batches are split by the client.
- :func:`validate_inputs`: the raw contract tensors of one Triton call
  against the limits the server publishes in its
  :class:`~contract.serving_spec.ServingSpec` (batch size, Nb, Tb, N).

numpy only: the client must install without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.blocks import EventHistory
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, HISTORY_INPUTS, REQUEST_INPUTS

I64 = npt.NDArray[np.int64]
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)
HISTORY_FIELDS = ("item_ids", "behaviors", "scenarios", "timestamps")
CONTRACT_INPUTS = (*HISTORY_INPUTS, *REQUEST_INPUTS, CANDIDATE_INPUT)


class RequestError(ValueError):
    """A request the client refuses to send; ``field`` names the offending input."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class ScoreRequest:
    """One user to score: their history, the candidates, the request's scenario and time.

    ``candidates`` is ``[N]`` item ids; ``timestamp`` is unix seconds, as are the
    history's timestamps. After :func:`validate_request`, every array is int64.
    """

    history: EventHistory
    candidates: Sequence[int] | I64
    scenario: int
    timestamp: int


# ---- single values and arrays ------------------------------------------------


def _is_int_scalar(value: object) -> bool:
    # bool is an int subclass in Python and numpy: reject it explicitly
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(field: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as a Python int within int64 (and ``>= minimum`` when given)."""
    if not _is_int_scalar(value):
        raise RequestError(field, f"must be an int, got {value!r} of type {type(value).__name__}")
    v: int = int(value)  # type: ignore[call-overload]  # _is_int_scalar checked it is an int or np.integer
    low = INT64_MIN if minimum is None else minimum
    if v < low:
        raise RequestError(field, f"value {v} is below the minimum {low}")
    if v > INT64_MAX:
        raise RequestError(field, f"value {v} exceeds the int64 maximum {INT64_MAX}")
    return v


def as_int64_array(field: str, value: object, *, ndim: int, allow_empty: bool = True) -> I64:
    """``value`` as an int64 array of rank ``ndim``; floats, bools and objects are refused, never cast."""
    try:
        arr = np.asarray(value)
    except (OverflowError, ValueError, TypeError) as e:  # ragged lists, ints beyond any numpy dtype
        raise RequestError(field, f"cannot be read as an integer array ({e})") from e
    if arr.ndim != ndim:
        raise RequestError(field, f"must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        if not allow_empty:
            raise RequestError(field, f"must not be empty, got shape {tuple(arr.shape)}")
        if arr.dtype.kind in "iuf":  # an empty JSON / Python list reads as float64: nothing to cast
            return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":  # kind "b" (bool), "f", "c", "O", "U", ... are refused
        raise RequestError(field, f"must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > INT64_MAX:
        idx = _first_index(arr > INT64_MAX)
        raise RequestError(field, f"value {int(arr[idx])} at index {idx} exceeds the int64 maximum {INT64_MAX}")
    return arr.astype(np.int64, copy=False)


def check_non_negative(field: str, arr: I64) -> None:
    """Refuse negative entries, naming the first (index, value) and how many there are."""
    bad = arr < 0
    if bad.any():
        idx = _first_index(bad)
        raise RequestError(
            field,
            f"value {int(arr[idx])} at index {idx} is negative ({int(bad.sum())} negative in all); "
            "unix timestamps must be >= 0",
        )


def _first_index(mask: npt.NDArray[np.bool_]) -> tuple[int, ...] | int:
    pos = tuple(int(i) for i in np.argwhere(mask)[0])
    return pos[0] if len(pos) == 1 else pos


# ---- one user's request ------------------------------------------------------


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def validate_history(history: EventHistory, field: str = "history") -> EventHistory:
    """The history with four equal-length 1-D int64 fields; timestamps ``>= 0``.

    Item ids are any int64 (the graphs hash them, negative ones too); behaviour and scenario
    ids outside the known ranges are legal (the graphs map them to an "unknown" slot), so only
    their dtype is checked. Item id 0 is padding and is dropped when blocks are built.
    """
    if not isinstance(history, EventHistory):
        raise RequestError(field, f"must be a contract.blocks.EventHistory, got {type(history).__name__}")
    arrays = {name: as_int64_array(f"{field}.{name}", getattr(history, name), ndim=1) for name in HISTORY_FIELDS}
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise RequestError(
            field, "fields must have equal lengths, got " + " ".join(f"{k}={v}" for k, v in lengths.items())
        )
    check_non_negative(f"{field}.timestamps", arrays["timestamps"])
    return EventHistory(**arrays)


def validate_candidates(candidates: object, field: str = "candidates") -> I64:
    """``[N]`` int64 candidate ids (any value: the graphs hash them), ``N >= 1``. Any N: the client
    chunks long lists."""
    return as_int64_array(field, candidates, ndim=1, allow_empty=False)


def validate_request(request: ScoreRequest, field: str = "") -> ScoreRequest:
    """A copy of ``request`` with int64 arrays and int scalars; :class:`RequestError` otherwise.

    ``field`` prefixes the names in error messages (``"requests[3]"`` gives
    ``requests[3].candidates: ...``).
    """
    if not isinstance(request, ScoreRequest):
        raise RequestError(field or "request", f"must be a ScoreRequest, got {type(request).__name__}")
    return ScoreRequest(
        history=validate_history(request.history, _join(field, "history")),
        candidates=validate_candidates(request.candidates, _join(field, "candidates")),
        scenario=check_int(_join(field, "scenario"), request.scenario),
        timestamp=check_int(_join(field, "timestamp"), request.timestamp, minimum=0),
    )


# ---- the raw tensors of one Triton call ----------------------------------------


def validate_inputs(inputs: Mapping[str, Any], spec: ServingSpec) -> dict[str, I64]:
    """Check one call's contract tensors against ``spec``; return them as int64 arrays.

    Names: exactly :data:`CONTRACT_INPUTS`. Shapes: history ``[B, Nb, Tb]``, request
    ``[B, 1]``, candidates ``[B, N]``, with ``1 <= B <= max_batch_size``,
    ``Nb == n_blocks``, ``1 <= Tb <= max_block_len``, ``1 <= N <= max_candidates``.
    Values: item ids and timestamps ``>= 0``.
    """
    missing = [n for n in CONTRACT_INPUTS if n not in inputs]
    unknown = sorted(set(inputs) - set(CONTRACT_INPUTS))
    if missing or unknown:
        raise RequestError(
            "inputs", f"missing {missing}, unknown {unknown}; the ensemble takes exactly {list(CONTRACT_INPUTS)}"
        )
    arrays: dict[str, I64] = {}
    for name in CONTRACT_INPUTS:
        value = inputs[name]
        # the contract is INT64: a narrower int tensor is refused too, the server would refuse it
        if isinstance(value, np.ndarray) and value.dtype != np.int64:
            raise RequestError(name, f"dtype {value.dtype} does not match the contract's int64")
        arrays[name] = as_int64_array(name, value, ndim=3 if name in HISTORY_INPUTS else 2)

    batch = int(arrays[CANDIDATE_INPUT].shape[0])
    for name, arr in arrays.items():
        if arr.shape[0] != batch:
            raise RequestError(name, f"batch size {arr.shape[0]} differs from {CANDIDATE_INPUT}'s {batch}")
    check_batch_size(CANDIDATE_INPUT, batch, spec)

    hist_shape = arrays[HISTORY_INPUTS[0]].shape
    for name in HISTORY_INPUTS:
        shape = arrays[name].shape
        if shape != hist_shape:
            raise RequestError(name, f"shape {tuple(shape)} differs from {HISTORY_INPUTS[0]}'s {tuple(hist_shape)}")
    _, nb, tb = hist_shape
    if nb != spec.n_blocks:
        raise RequestError(
            HISTORY_INPUTS[0], f"Nb={nb} blocks, the served model has {spec.n_blocks} ({[b.name for b in spec.blocks]})"
        )
    if not 1 <= tb <= spec.max_block_len:
        raise RequestError(
            HISTORY_INPUTS[0], f"block length Tb={tb} is outside [1, max_block_len={spec.max_block_len}]"
        )
    for name in REQUEST_INPUTS:
        if arrays[name].shape[1] != 1:
            raise RequestError(name, f"shape {tuple(arrays[name].shape)} must be [B, 1]")
    n = int(arrays[CANDIDATE_INPUT].shape[1])
    if not 1 <= n <= spec.max_candidates:
        raise RequestError(
            CANDIDATE_INPUT,
            f"N={n} candidates per user is outside [1, max_candidates={spec.max_candidates}]; "
            "AstroClient.score chunks longer lists",
        )
    for name in ("hist_timestamps", "request_timestamp"):
        check_non_negative(name, arrays[name])
    return arrays


def check_batch_size(field: str, batch: int, spec: ServingSpec) -> None:
    if not 1 <= batch <= spec.max_batch_size:
        raise RequestError(
            field,
            f"batch size {batch} is outside [1, max_batch_size={spec.max_batch_size}]; "
            "AstroClient.score_batch splits larger batches",
        )


def check_spec(spec: ServingSpec) -> None:
    """A served spec the client can build requests for (blocks fit ``max_block_len``, limits >= 1)."""
    longest = max((b.max_len for b in spec.blocks), default=0)
    problems = []
    if not spec.blocks:
        problems.append("no blocks")
    if longest > spec.max_block_len:
        problems.append(f"a block keeps {longest} events but max_block_len={spec.max_block_len}")
    if spec.max_batch_size < 1 or spec.max_candidates < 1:
        problems.append(f"max_batch_size={spec.max_batch_size}, max_candidates={spec.max_candidates} must be >= 1")
    if not spec.task_names or not all(spec.task_names):
        problems.append(f"task_names={list(spec.task_names)} must be non-empty names")
    if problems:
        raise ValueError("inconsistent serving spec: " + "; ".join(problems))
