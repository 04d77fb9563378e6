"""W3C Trace Context for the client's calls: the ``traceparent`` header every call carries.

A ``traceparent`` (W3C Trace Context, version ``00``) is ``00-<trace-id>-<parent-id>-<trace-flags>``:
the trace id 32 lowercase hex digits, the parent id (the span id of the caller's span) 16, the flags 2
(``01`` = sampled); an all-zero trace id or parent id is invalid. Example::

    00-4bf92f3577b34da6a3ce929358ef9a1a-00f067aa0ba902b7-01

:class:`CallTracer` gives each call its header. Given the caller's ``traceparent``, every call joins the
caller's trace: same trace id and flags, a fresh parent id per call (each call is a span of its own under
the caller's). Without one, every call starts a trace of its own (a fresh trace id, sampled).

Triton (OpenTelemetry trace mode) reads the header from the gRPC metadata and makes its spans children
of it: the ensemble's and each composing model's spans then carry the caller's trace id.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

__all__ = ["SAMPLED", "TRACEPARENT", "CallTracer", "TraceParent", "TraceParentError"]

TRACEPARENT = "traceparent"  # the header (gRPC metadata key), lowercase as gRPC requires
VERSION = "00"  # the only version this client writes and reads
SAMPLED = "01"  # trace-flags with the sampled bit set
TRACE_ID_HEX = 32
PARENT_ID_HEX = 16
_FORMAT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class TraceParentError(ValueError):
    """A ``traceparent`` that is not ``00-<32 hex>-<16 hex>-<2 hex>`` (lowercase, ids not all zero)."""


def _random_hex(digits: int) -> str:
    """``digits`` random lowercase hex digits, never all zero (the W3C invalid value)."""
    while True:
        value = secrets.token_hex(digits // 2)
        if value.strip("0"):
            return value


@dataclass(frozen=True)
class TraceParent:
    """One ``traceparent`` value, checked: ``trace_id`` [32 hex], ``parent_id`` [16 hex], ``flags`` [2 hex]."""

    trace_id: str
    parent_id: str
    flags: str = SAMPLED

    def __post_init__(self) -> None:
        _check_hex("trace-id", self.trace_id, TRACE_ID_HEX)
        _check_hex("parent-id", self.parent_id, PARENT_ID_HEX)
        _check_hex("trace-flags", self.flags, 2, zero_ok=True)

    @classmethod
    def parse(cls, header: str) -> TraceParent:
        """Read a caller's header (surrounding whitespace ignored); :class:`TraceParentError` names what is wrong."""
        text = header.strip()
        match = _FORMAT.match(text)
        if match is None:
            raise TraceParentError(
                f"traceparent {header!r} is not 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<trace-flags: 2 hex> "
                "(lowercase hex digits, e.g. 00-4bf92f3577b34da6a3ce929358ef9a1a-00f067aa0ba902b7-01)"
            )
        version, trace_id, parent_id, flags = match.groups()
        if version != VERSION:
            raise TraceParentError(f"traceparent {header!r}: version {version!r} is not supported (only {VERSION!r})")
        return cls(trace_id, parent_id, flags)

    @classmethod
    def new(cls) -> TraceParent:
        """The root of a new trace: fresh trace id and parent id, sampled."""
        return cls(_random_hex(TRACE_ID_HEX), _random_hex(PARENT_ID_HEX), SAMPLED)

    def child(self) -> TraceParent:
        """The same trace and flags under a fresh parent id: the header of one call inside this trace."""
        return TraceParent(self.trace_id, _random_hex(PARENT_ID_HEX), self.flags)

    def header(self) -> str:
        return f"{VERSION}-{self.trace_id}-{self.parent_id}-{self.flags}"


def _check_hex(field: str, value: str, digits: int, *, zero_ok: bool = False) -> None:
    if len(value) != digits or not re.fullmatch(r"[0-9a-f]*", value):
        raise TraceParentError(f"traceparent {field} {value!r} must be {digits} lowercase hex digits")
    if not zero_ok and not value.strip("0"):
        raise TraceParentError(f"traceparent {field} {value!r} is all zeros, which W3C Trace Context forbids")


class CallTracer:
    """The ``traceparent`` of each call: under the caller's trace when one is given, else a new trace per call.

    ``traceparent``: the caller's header (e.g. the one its own incoming request carried), validated here.
    Thread-safe: :meth:`next_header` keeps no state between calls.
    """

    def __init__(self, traceparent: str | None = None) -> None:
        self.caller = TraceParent.parse(traceparent) if traceparent is not None else None

    @property
    def trace_id(self) -> str | None:
        """The caller's trace id that every call carries, or None when each call starts its own trace."""
        return self.caller.trace_id if self.caller is not None else None

    def next_header(self) -> str:
        """The header for one call: the caller's trace with a fresh parent id, or a new trace."""
        return (self.caller.child() if self.caller is not None else TraceParent.new()).header()
