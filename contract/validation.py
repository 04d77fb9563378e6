"""One validator for every entry point: the client, the block helper, JSON requests and raw tensors.

**The integer rule, everywhere:** an id, a behaviour, a scenario or a timestamp is an *integer*:
a Python ``int`` or a numpy integer (an array of a numpy integer dtype), within int64. Everything
else is refused, never cast: floats (``3.0`` and ``1.7e9`` too: a JSON decoder reads ``1700000000``
as an int, so a float means the sender wrote something else), bools, strings, ``None``, nested or
ragged lists, unsigned values beyond int64. Errors are :class:`RequestError` (a ``ValueError``)
naming the field, the offending element's index and value, and the limit.

**Plausibility, on top:** values that are legal for the graphs but most likely a mistake are
refused unless an :class:`Allow` says otherwise:

- behaviour and scenario ids outside the served vocabularies (the graphs map them to a learned
  "unknown" slot): ``Allow(unknown_ids=True)``;
- timestamps outside ``[0, 2100-01-01)`` in unix seconds (milliseconds, ``1.7e12``, land far
  beyond; negative ones are clamped by the graphs): ``Allow(any_timestamp=True)``;
- history events with item id 0, the padding id (the block helper drops them):
  ``Allow(padding_items=True)``.

Shapes, dtypes and limits of the raw ensemble tensors come from their declarations in
:mod:`contract.tensors`, bounded by what the server publishes (:class:`~contract.serving_spec.ServingSpec`).
numpy only: the client must install without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from contract.tensors import (
    BATCH,
    CANDIDATE_INPUT,
    CANDIDATES,
    DTYPES,
    ENSEMBLE,
    GRAPH_IO,
    HIST_BEHAVIORS,
    HIST_ITEM_IDS,
    HIST_SCENARIOS,
    HIST_TIMESTAMPS,
    HISTORY_INPUTS,
    REQUEST_SCENARIO,
    REQUEST_TIMESTAMP,
    TENSORS,
    Axis,
)

I64 = npt.NDArray[np.int64]
CONTRACT_INPUTS: tuple[str, ...] = GRAPH_IO[ENSEMBLE][0]  # the ensemble's inputs, in declaration order
INT_DTYPE = np.dtype(DTYPES[TENSORS[CANDIDATE_INPUT].dtype].numpy)  # the contract's integer type, int64
if INT_DTYPE.kind != "i" or any(np.dtype(DTYPES[TENSORS[n].dtype].numpy) != INT_DTYPE for n in CONTRACT_INPUTS):
    raise ImportError("contract.validation assumes every ensemble input is declared with one signed integer dtype")
_LIMITS = np.iinfo(INT_DTYPE)  # type: ignore[type-var]  # an integer dtype, checked just above
INT64_MIN, INT64_MAX = int(_LIMITS.min), int(_LIMITS.max)

PAD_ITEM = 0  # item id 0 marks a padding slot of a block; real items use any other int64 value
HISTORY_FIELDS = ("item_ids", "behaviors", "scenarios", "timestamps")  # EventHistory's fields, in order
HISTORY_TENSOR = dict(zip(HISTORY_FIELDS, HISTORY_INPUTS, strict=True))  # field -> the ensemble input
REQUEST_FIELDS = ("history", "candidates", "scenario", "timestamp")  # one user's request (JSON keys too)
OPTIONAL_REQUEST_FIELDS = ("user_id",)  # may be left out: a caller's stable id, used to route the request
USER_ID_MAX_CHARS = 256  # a user id is a short opaque string (it travels as a header value)
# plausible unix seconds: 1970-01-01 up to 2100-01-01; milliseconds (1.7e12) land far beyond
TIMESTAMP_MIN, TIMESTAMP_END = 0, 4_102_444_800


class RequestError(ValueError):
    """A request refused before it is sent; ``field`` names the offending input."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Allow:
    """Likely mistakes to let through anyway (all refused by default); see the module doc."""

    unknown_ids: bool = False  # behaviour / scenario ids outside the served vocabularies
    any_timestamp: bool = False  # timestamps outside [0, 2100-01-01) unix seconds
    padding_items: bool = False  # history events with item id 0 (dropped when blocks are built)


class Vocabularies(Protocol):
    """What the plausibility checks read: a :class:`~contract.serving_spec.ServingSpec` or a model config."""

    @property
    def behaviors(self) -> tuple[str, ...]: ...

    @property
    def scenarios(self) -> tuple[str, ...]: ...


class ServedLimits(Vocabularies, Protocol):
    """What the tensor checks read: the limits named by the declarations' axes and sizes."""

    @property
    def max_batch_size(self) -> int: ...

    @property
    def max_candidates(self) -> int: ...

    @property
    def max_block_len(self) -> int: ...

    @property
    def n_blocks(self) -> int: ...


# ---- the integer rule ------------------------------------------------------------------


def is_int(value: object) -> bool:
    """An integer by the rule: ``int`` or a numpy integer, never a bool (an int subclass in Python)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _describe(value: object) -> str:
    kind = type(value).__name__
    if isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim > 0):
        kind = "a nested sequence"
    return f"{value!r} ({kind})"


def as_int(field: str, value: object, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
    """``value`` as a Python int within ``[minimum, maximum]`` (int64 by default)."""
    if not is_int(value):
        hint = "; write integers (1700000000, not 1.7e9)" if isinstance(value, float | np.floating) else ""
        raise RequestError(field, f"must be an integer, got {_describe(value)}{hint}")
    v: int = int(value)  # type: ignore[call-overload]  # is_int: an int or a numpy integer
    if v < minimum:
        raise RequestError(field, f"value {v} is below the minimum {minimum}")
    if v > maximum:
        limit = "the int64 maximum" if maximum == INT64_MAX else "the maximum"
        raise RequestError(field, f"value {v} exceeds {limit} {maximum}")
    return v


def as_int_array(field: str, value: object, *, ndim: int, allow_empty: bool = True) -> I64:
    """``value`` (nested lists, tuples or a numpy array) as an int64 array of rank ``ndim``.

    Refused, naming the first offending element's index and value: any element that is not an
    integer by the rule, and values outside int64. An empty list (numpy reads it as float64) is
    an empty int64 array unless ``allow_empty=False``.
    """
    if value is None or isinstance(value, str | bytes | Mapping) or is_int(value) or isinstance(value, float):
        raise RequestError(field, f"must be a {ndim}-D sequence of integers, got {_describe(value)}")
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (OverflowError, ValueError, TypeError) as e:  # ragged lists, ints beyond any numpy dtype
        raise RequestError(field, f"cannot be read as a {ndim}-D array of integers ({e})") from e
    if arr.ndim != ndim:
        raise RequestError(field, f"must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:  # no element to refuse, whatever numpy made of it ([] reads as float64)
        if not allow_empty:
            raise RequestError(field, f"must not be empty, got shape {tuple(arr.shape)}")
        return np.zeros(arr.shape, dtype=INT_DTYPE)
    if not isinstance(value, np.ndarray) or arr.dtype.kind == "O":
        # a Python sequence: numpy may have cast bools or floats among ints; judge the elements as written
        _check_elements(field, value)
    kind = arr.dtype.kind
    if kind == "i":
        return arr.astype(INT_DTYPE, copy=False)
    if kind == "u":
        if arr.size and int(arr.max()) > INT64_MAX:
            idx = _first(arr > INT64_MAX)
            raise RequestError(field, f"value {int(arr[idx])} at index {idx} exceeds the int64 maximum {INT64_MAX}")
        return arr.astype(INT_DTYPE)
    if kind == "O":  # Python ints, every one checked within int64 above
        return arr.astype(INT_DTYPE)
    first = arr.reshape(-1)[0].item()
    raise RequestError(field, f"must hold integers, got dtype {arr.dtype} (element {_index((0,) * ndim)}: {first!r})")


def _index(pos: tuple[int, ...]) -> str:
    return str(pos[0]) if len(pos) == 1 else str(tuple(pos))


def _first(mask: npt.NDArray[np.bool_]) -> int | tuple[int, ...]:
    pos = tuple(int(i) for i in np.argwhere(mask)[0])
    return pos[0] if len(pos) == 1 else pos


def _check_elements(field: str, value: object) -> None:
    """Refuse the first element of (nested) sequences that is not an int64 integer, naming its index."""
    if isinstance(value, list | tuple) and all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in value):
        return  # the common case, flat Python ints: one quick pass

    def walk(v: object, pos: tuple[int, ...]) -> None:
        if isinstance(v, list | tuple) or (isinstance(v, np.ndarray) and v.ndim > 0):
            for i, item in enumerate(v):
                walk(item, (*pos, i))
            return
        if not is_int(v):
            hint = "; write integers (1700000000, not 1.7e9)" if isinstance(v, float | np.floating) else ""
            raise RequestError(field, f"element {_index(pos)} is {_describe(v)}, not an integer{hint}")
        n = int(v)  # type: ignore[call-overload]  # is_int: an int or a numpy integer
        if not INT64_MIN <= n <= INT64_MAX:
            raise RequestError(field, f"element {_index(pos)} is {n}, outside int64 [{INT64_MIN}, {INT64_MAX}]")

    walk(value, ())


# ---- ranges --------------------------------------------------------------------------


def check_range(
    field: str, arr: I64, low: int, end: int, what: str, hint: str = "", where: npt.NDArray[np.bool_] | None = None
) -> None:
    """Refuse entries outside ``[low, end)`` (only where ``where`` is True), naming the first and how many.

    ``arr`` may be 0-D (a request scalar): then no index is named."""
    bad = (arr < low) | (arr >= end)
    if where is not None:
        bad &= where
    if not bad.any():
        return
    if arr.ndim == 0:
        head = f"value {int(arr)}"
    else:
        idx = _first(bad)
        n = int(bad.sum())
        head = f"value {int(arr[idx])} at index {idx}" + (f" (one of {n})" if n > 1 else "")
    raise RequestError(field, f"{head} is outside {what} [{low}, {end})" + (f"; {hint}" if hint else ""))


def _allow_hint(flag: str) -> str:
    return f"to send it anyway pass Allow({flag}=True) (command line: --allow-{flag.replace('_', '-')})"


def check_timestamps(field: str, arr: I64, allow: Allow, where: npt.NDArray[np.bool_] | None = None) -> None:
    if not allow.any_timestamp:
        check_range(
            field,
            arr,
            TIMESTAMP_MIN,
            TIMESTAMP_END,
            "plausible unix seconds (1970 to 2100)",
            "milliseconds? divide by 1000; " + _allow_hint("any_timestamp"),
            where,
        )


def check_vocabulary(
    field: str, arr: I64, names: Sequence[str], kind: str, allow: Allow, where: npt.NDArray[np.bool_] | None = None
) -> None:
    """Ids must index the served vocabulary ``names`` (``kind``: "behaviour" or "scenario")."""
    if not allow.unknown_ids:
        vocab = ", ".join(f"{i}={n}" for i, n in enumerate(names))
        check_range(
            field,
            arr,
            0,
            len(names),
            f"the served {kind} ids",
            f"the server's {kind}s are {vocab}; the model would read this id as 'unknown'; "
            + _allow_hint("unknown_ids"),
            where,
        )


def check_items(field: str, item_ids: I64, allow: Allow) -> None:
    """History item id 0 is the padding id: such an event would be dropped from every block."""
    if not allow.padding_items and (item_ids == PAD_ITEM).any():
        idx = _first(item_ids == PAD_ITEM)
        n = int((item_ids == PAD_ITEM).sum())
        raise RequestError(
            field,
            f"value {PAD_ITEM} at index {idx} is the padding item id ({n} in all): the event would be dropped "
            f"from every block; shift 0-based ids by one, or {_allow_hint('padding_items')} to drop them",
        )


# ---- one user's history and request ------------------------------------------------------


def check_history(field: str, *fields: object) -> tuple[I64, I64, I64, I64]:
    """The four history fields (:data:`HISTORY_FIELDS` order) as equal-length 1-D int64 arrays."""
    if len(fields) != len(HISTORY_FIELDS):
        raise TypeError(f"check_history takes {len(HISTORY_FIELDS)} fields, got {len(fields)}")
    a, b, c, d = (as_int_array(f"{field}.{name}", v, ndim=1) for name, v in zip(HISTORY_FIELDS, fields, strict=True))
    lengths = {name: int(x.shape[0]) for name, x in zip(HISTORY_FIELDS, (a, b, c, d), strict=True)}
    if len(set(lengths.values())) != 1:
        raise RequestError(
            field, "fields must have equal lengths, got " + " ".join(f"{k}={v}" for k, v in lengths.items())
        )
    return a, b, c, d


def check_user_id(field: str, value: object) -> str | None:
    """A caller-given user id: None, or a non-empty string of printable ASCII, at most :data:`USER_ID_MAX_CHARS`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string (or left out), got {_describe(value)}")
    if not value or len(value) > USER_ID_MAX_CHARS or not (value.isascii() and value.isprintable()):
        raise RequestError(
            field, f"must be 1 to {USER_ID_MAX_CHARS} printable ASCII characters, got {len(value)}: {value[:40]!r}"
        )
    return value


def check_plausible(field: str, history: tuple[I64, I64, I64, I64], timestamp: int, allow: Allow) -> None:
    """The likely-mistake checks that need no served spec: padding items and timestamps.

    ``field`` prefixes the names (``"requests[2]"`` gives ``requests[2].history.item_ids``)."""
    prefix = f"{field}." if field else ""
    check_items(f"{prefix}history.item_ids", history[0], allow)
    check_timestamps(f"{prefix}history.timestamps", history[3], allow)
    check_timestamps(f"{prefix}timestamp", np.array(timestamp, dtype=INT_DTYPE), allow)


def check_vocabularies(
    field: str, history: tuple[I64, I64, I64, I64], scenario: int, vocab: Vocabularies, allow: Allow
) -> None:
    """Behaviour and scenario ids of one user's request against the served vocabularies."""
    prefix = f"{field}." if field else ""
    check_vocabulary(f"{prefix}history.behaviors", history[1], vocab.behaviors, "behaviour", allow)
    check_vocabulary(f"{prefix}history.scenarios", history[2], vocab.scenarios, "scenario", allow)
    check_vocabulary(f"{prefix}scenario", np.array(scenario, dtype=INT_DTYPE), vocab.scenarios, "scenario", allow)


# ---- the raw tensors of one ensemble call ---------------------------------------------------


def validate_inputs(inputs: Mapping[str, Any], spec: ServedLimits, allow: Allow = Allow()) -> dict[str, I64]:
    """Check one call's ensemble tensors against their declarations and ``spec``; return them as int64.

    Names: exactly :data:`CONTRACT_INPUTS`. Dtype: the declared int64 (a numpy array of another
    dtype is refused: the server would refuse it). Shapes: the declared rank; each dynamic axis
    (B, Tb, N) the same size in every tensor and within ``[1, spec.<its limit>]``; each static
    size (Nb, the 1 of request tensors) equal to the served one. Values: the plausibility checks
    of :class:`Allow` at real (non-padding) history slots and in the request tensors.
    """
    missing = [n for n in CONTRACT_INPUTS if n not in inputs]
    unknown = sorted(set(inputs) - set(CONTRACT_INPUTS))
    if missing or unknown:
        raise RequestError(
            "inputs", f"missing {missing}, unknown {unknown}; the ensemble takes exactly {list(CONTRACT_INPUTS)}"
        )
    arrays: dict[str, I64] = {}
    for name in CONTRACT_INPUTS:
        decl, value = TENSORS[name], inputs[name]
        if isinstance(value, np.ndarray) and value.dtype != DTYPES[decl.dtype].numpy:
            raise RequestError(name, f"dtype {value.dtype} does not match the contract's {decl.dtype}")
        arrays[name] = as_int_array(name, value, ndim=len(decl.shape))
    _check_shapes(arrays, spec)
    real = arrays[HIST_ITEM_IDS] != PAD_ITEM
    check_timestamps(HIST_TIMESTAMPS, arrays[HIST_TIMESTAMPS], allow, real)
    check_timestamps(REQUEST_TIMESTAMP, arrays[REQUEST_TIMESTAMP], allow)
    check_vocabulary(HIST_BEHAVIORS, arrays[HIST_BEHAVIORS], spec.behaviors, "behaviour", allow, real)
    check_vocabulary(HIST_SCENARIOS, arrays[HIST_SCENARIOS], spec.scenarios, "scenario", allow, real)
    check_vocabulary(REQUEST_SCENARIO, arrays[REQUEST_SCENARIO], spec.scenarios, "scenario", allow)
    return arrays


_HINTS = {
    BATCH.symbol: "AstroClient.score_batch splits larger batches",
    CANDIDATES.symbol: "AstroClient.score chunks longer lists",
}


def _check_shapes(arrays: Mapping[str, I64], spec: ServedLimits) -> None:
    """Each declared axis of each tensor: dynamic ones agree across tensors and lie within their limit."""
    seen: dict[str, tuple[str, int]] = {}  # axis symbol -> (first tensor, its size)
    for name, arr in arrays.items():
        for i, size_decl in enumerate(TENSORS[name].shape):
            size = int(arr.shape[i])
            if isinstance(size_decl, Axis):
                first = seen.setdefault(size_decl.symbol, (name, size))
                if first[1] != size:
                    raise RequestError(
                        name,
                        f"shape {tuple(arr.shape)}: {size_decl.what} = {size} on axis {i} differs from "
                        f"{first[0]}'s {first[1]} (shape {tuple(arrays[first[0]].shape)}); they must agree",
                    )
                limit = int(getattr(spec, size_decl.limit_field))
                if not 1 <= size <= limit:
                    hint = _HINTS.get(size_decl.symbol, "")
                    raise RequestError(
                        name,
                        f"{size_decl.what} = {size} on axis {i} is outside [1, {size_decl.limit_field}={limit}]"
                        + (f"; {hint}" if hint else ""),
                    )
            else:
                expected = size_decl if isinstance(size_decl, int) else int(getattr(spec, size_decl))
                if size != expected:
                    what = f"{size_decl}={expected}" if isinstance(size_decl, str) else str(expected)
                    blocks = getattr(spec, "blocks", None)
                    named = f" ({[b.name for b in blocks]})" if size_decl == "n_blocks" and blocks else ""
                    raise RequestError(
                        name,
                        f"shape {tuple(arr.shape)}: axis {i} is {size}, the served model takes {what}{named}",
                    )


__all__ = [
    "CONTRACT_INPUTS",
    "HISTORY_FIELDS",
    "HISTORY_TENSOR",
    "I64",
    "INT64_MAX",
    "INT64_MIN",
    "OPTIONAL_REQUEST_FIELDS",
    "PAD_ITEM",
    "REQUEST_FIELDS",
    "TIMESTAMP_END",
    "TIMESTAMP_MIN",
    "USER_ID_MAX_CHARS",
    "Allow",
    "RequestError",
    "as_int",
    "as_int_array",
    "check_history",
    "check_plausible",
    "check_user_id",
    "check_vocabularies",
    "validate_inputs",
]
