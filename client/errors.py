"""What a failed call means: the client's error types and how a server's error is read.

- :class:`ServerError`: the server (or the channel to it) failed a call, with the server's own
  message; :class:`ServerUnavailableError`: no server reachable; :class:`ServerOverloadedError`:
  the servers refused the call for lack of room (admission control) on every try within the
  caller's deadline; the message names the limit and what to do.
- :func:`failure_kind`: which failures another try may cure (a replica gone, a refusal, a model
  still loading) and which would fail the same way again (bad input, an internal error).
"""

from __future__ import annotations

from typing import Literal

from tritonclient.utils import InferenceServerException

UNAVAILABLE = "StatusCode.UNAVAILABLE"  # how tritonclient spells grpc.StatusCode.UNAVAILABLE in .status()
RESOURCE_EXHAUSTED = "StatusCode.RESOURCE_EXHAUSTED"
NOT_FOUND = "StatusCode.NOT_FOUND"
DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"
LOADING = "has no available versions"  # Triton's NOT_FOUND for a known model whose versions are still loading
# Triton's refusals by a composing model's queue policy (UNAVAILABLE, the model named in the message) -> the limit
REFUSALS = {
    "Exceeds maximum queue size": "the model's queue bound (dynamic_batching.default_queue_policy.max_queue_size)",
    "Request timeout expired": "the longest queue wait (the queue policy's timeout, or this call's share per queue "
    "of its deadline)",
}
OVERLOAD_ADVICE = (
    "retry later with backoff, send fewer requests at once (max_in_flight), give the call a longer deadline, "
    "or add replicas"
)
FailureKind = Literal["down", "refused", "loading"]


class ServerError(RuntimeError):
    """The server (or the channel to it) failed a call; ``server_message`` is the server's own text.

    ``attempts`` counts the client's own attempts (more than 1 while a model was loading, or when
    the router tried several replicas); gRPC's retries on a balanced channel happen inside each."""

    def __init__(
        self, message: str, *, status: str | None = None, server_message: str | None = None, attempts: int = 1
    ):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.attempts = attempts


class ServerUnavailableError(ServerError):
    """No server reachable at the url within the call's deadline, or UNAVAILABLE on every attempt."""


class ServerOverloadedError(ServerError):
    """Every try within the caller's deadline was refused by admission control (a full queue, a queue wait
    past its bound, a proxy's limit). ``limit`` says which, in words."""

    def __init__(self, message: str, *, limit: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]  # ServerError's keyword arguments
        self.limit = limit


def is_model_loading(e: InferenceServerException) -> bool:
    """The server is up but the model is still (re)loading: Triton's NOT_FOUND "has no available versions".

    A model name the server does not know at all is NOT_FOUND without :data:`LOADING`."""
    return bool(e.status() == NOT_FOUND and LOADING in (e.message() or ""))


def refused_limit(e: InferenceServerException) -> str | None:
    """The limit a refusal names, in words, or None if ``e`` is no refusal."""
    message = e.message() or ""
    if e.status() == UNAVAILABLE:
        return next((limit for phrase, limit in REFUSALS.items() if phrase in message), None)
    if e.status() == RESOURCE_EXHAUSTED:
        return "a limit on requests in flight (the server's or a proxy's)"
    return None


def failure_kind(e: InferenceServerException) -> FailureKind | None:
    """What another try may cure: ``"refused"`` (admission control, :func:`refused_limit`), ``"down"``
    (UNAVAILABLE otherwise: the replica or the connection is gone), ``"loading"`` (:func:`is_model_loading`);
    None for everything else (INVALID_ARGUMENT, INTERNAL, DEADLINE_EXCEEDED ... would fail again)."""
    if refused_limit(e) is not None:
        return "refused"
    if e.status() == UNAVAILABLE:
        return "down"
    if is_model_loading(e):
        return "loading"
    return None


def server_error(e: InferenceServerException, what: str, url: str, attempts: int) -> ServerError:
    """The client error for a call that failed for good with ``e``."""
    status = e.status()
    message = e.message()
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    limit = refused_limit(e)
    if limit is not None:
        return ServerOverloadedError(
            f"{what} at {url} failed{tries}: the server is overloaded and refused the call [{status}]: {message}; "
            f"the limit reached: {limit}; {OVERLOAD_ADVICE}",
            limit=limit,
            status=status,
            server_message=message,
            attempts=attempts,
        )
    cls = ServerUnavailableError if status == UNAVAILABLE else ServerError
    return cls(
        f"{what} at {url} failed{tries} [{status}]: {message}", status=status, server_message=message, attempts=attempts
    )
