"""gRPC clients of the ``astro`` Triton ensemble.

:class:`AstroClient` (blocking, over ``tritonclient.grpc``) and :class:`AsyncAstroClient`
(asyncio, over ``tritonclient.grpc.aio``) share one implementation of everything but the I/O:
each operation is a *flow*, a generator that yields the transport steps it needs (:class:`Rpc`,
:class:`Sleep`, :class:`Concurrently`) and gets their results back; each client only runs the
steps, blocking or awaiting. So request building, validation, call planning, retry decisions,
error mapping and result assembly exist once:

- the served limits, vocabularies and block layout come from the ensemble's config ``parameters``
  (:class:`~contract.serving_spec.ServingSpec`), fetched once on first use and cached;
- requests are checked by :mod:`contract.validation` (the integer rule, plausibility, the
  served vocabularies) before anything is sent;
- one user's history is cut into ``[Nb, Tb]`` blocks by :mod:`contract.blocks` with the
  *server's* behaviour vocabulary;
- :func:`plan_calls` makes every chunk of at most ``max_candidates`` candidates of every request
  a Triton call of its own (``B=1``), :func:`build_call_inputs` gives all chunks of a request
  the same encoder inputs (the user's blocks at its own Tb, the request scenario), byte for
  byte, and :func:`assemble_scores` puts every score back in request order. A request's first
  chunk is sent, and answered, before the rest: Triton's response cache on ``user_encoder``
  then serves every later chunk (and every later request of an unchanged history) as a hit.

Waiting and retrying are gRPC's, from the channel's service config (:func:`service_config`):
calls wait for a connection up to their deadline (``waitForReady``), UNAVAILABLE is retried
with exponential backoff (``retryPolicy``), and several addresses (``"h1:p1,h2:p2"``) are
balanced by gRPC's ``round_robin``. The client retries by hand only what gRPC cannot know: a
model that is still loading (Triton's NOT_FOUND "has no available versions"). Every other
server error is raised at once as :class:`ServerError` carrying the server's message. Headers
go with every call through tritonclient's ``register_plugin``.

Imports numpy, tritonclient and the torch-free ``contract`` package only (``pip install .[client]``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.tracing import TRACEPARENT, CallTracer
from client.validation import (
    CONTRACT_INPUTS,
    I64,
    Allow,
    RequestError,
    ScoreRequest,
    check_served,
    check_spec,
    validate_inputs,
    validate_request,
)
from contract.blocks import EventHistory, build_blocks
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, ENSEMBLE, REQUEST_SCENARIO, REQUEST_TIMESTAMP, SCORES_OUTPUT
from contract.validation import HISTORY_FIELDS, HISTORY_TENSOR

F32 = npt.NDArray[np.float32]
T = TypeVar("T")

DEFAULT_URL = "127.0.0.1:8001"
SERVICE = "inference.GRPCInferenceService"  # Triton's gRPC service, as named in service configs
WAITING_METHODS = ("ModelInfer", "ModelConfig", "ModelMetadata")  # wait for a server, retry UNAVAILABLE
PROBE_METHODS = ("ServerLive", "ServerReady", "ModelReady")  # health probes: one attempt, fail fast
RETRYABLE_STATUS_CODES = ("UNAVAILABLE",)  # what gRPC retries: the server or the connection was not there
GRPC_MAX_ATTEMPTS = 5  # gRPC clamps retryPolicy.maxAttempts to 5 (and logs an error when asked for more)
RETRY_BUFFER_BYTES = 64 << 20  # gRPC retries only calls whose request fits its buffer (256 KiB by default)
PROBE_TIMEOUT_S = 0.5  # after a deadline passed while waiting: is any server reachable at all?
UNAVAILABLE = "StatusCode.UNAVAILABLE"  # how tritonclient spells grpc.StatusCode.UNAVAILABLE in .status()
NOT_FOUND = "StatusCode.NOT_FOUND"
DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"
LOADING = "has no available versions"  # Triton's NOT_FOUND for a known model whose versions are still loading


def is_model_loading(e: InferenceServerException) -> bool:
    """The one error the client retries by hand: the server is up but the model is still (re)loading.

    Everything else is final here: UNAVAILABLE was already retried by gRPC (service config), a
    model name the server does not know at all is NOT_FOUND without :data:`LOADING`, and
    INVALID_ARGUMENT, INTERNAL, DEADLINE_EXCEEDED ... would fail the same way again.
    """
    return bool(e.status() == NOT_FOUND and LOADING in (e.message() or ""))


# ---- errors ------------------------------------------------------------------------


class ServerError(RuntimeError):
    """The server (or the channel to it) failed a call; ``server_message`` is the server's own text.

    ``attempts`` counts the client's own attempts (more than 1 only while a model was loading);
    gRPC's retries of UNAVAILABLE happen inside each of them."""

    def __init__(
        self, message: str, *, status: str | None = None, server_message: str | None = None, attempts: int = 1
    ):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.attempts = attempts


class ServerUnavailableError(ServerError):
    """No server reachable at the url within the call's deadline, or UNAVAILABLE on every gRPC attempt."""


def _server_error(e: InferenceServerException, what: str, url: str, attempts: int) -> ServerError:
    status = e.status()
    message = e.message()
    cls = ServerUnavailableError if status == UNAVAILABLE else ServerError
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return cls(
        f"{what} at {url} failed{tries} [{status}]: {message}", status=status, server_message=message, attempts=attempts
    )


# ---- waiting and retrying: gRPC's service config -------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How calls wait and retry; all of it but the loading retry is done by gRPC.

    ``wait_for_ready``: a call waits for a server to accept it until its deadline, instead of
    failing at once while none is reachable (a restart, a replica coming up). ``retries``: extra
    attempts after UNAVAILABLE (gRPC's ``retryPolicy``, which allows at most 4) and after "model
    still loading" (by hand); the delay before retry ``k`` is ``backoff_s * 2**(k-1)``, capped at
    ``backoff_max_s``, which also bounds how long gRPC waits before re-dialling a refused address.
    """

    retries: int = 2
    backoff_s: float = 0.05
    backoff_max_s: float = 1.0
    wait_for_ready: bool = True

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries={self.retries} must be >= 0")
        if not (self.backoff_s > 0 and self.backoff_max_s > 0):
            raise ValueError(f"backoff_s={self.backoff_s}, backoff_max_s={self.backoff_max_s} must be > 0")

    def delay(self, attempt: int) -> float:
        """Sleep after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))

    @property
    def grpc_attempts(self) -> int:
        return min(self.retries + 1, GRPC_MAX_ATTEMPTS)

    def service_config(self) -> dict[str, Any]:
        """gRPC's service config: round_robin over every address; inference and config calls wait for
        a server and retry UNAVAILABLE; health probes make one fail-fast attempt."""
        waiting: dict[str, Any] = {
            "name": [{"service": SERVICE, "method": m} for m in WAITING_METHODS],
            "waitForReady": self.wait_for_ready,
        }
        if self.grpc_attempts > 1:
            waiting["retryPolicy"] = {
                "maxAttempts": self.grpc_attempts,
                "initialBackoff": _duration(self.backoff_s),
                "maxBackoff": _duration(max(self.backoff_s, self.backoff_max_s)),
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(RETRYABLE_STATUS_CODES),
            }
        probes = {"name": [{"service": SERVICE, "method": m} for m in PROBE_METHODS], "waitForReady": False}
        return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [waiting, probes]}


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration, as service configs spell it: ``"0.050s"``."""
    return f"{max(seconds, 0.001):.3f}s"


def channel_args(retry: RetryPolicy, ssl_target_name: str | None = None) -> list[tuple[str, str | int]]:
    """tritonclient's default channel options plus the service config, retries and reconnect backoff.

    After a refused connection gRPC waits its reconnect backoff (1 s, growing to 120 s, by
    default) before dialling again; matched to ``retry`` so that a waiting call reaches a
    server soon after it comes back.
    """
    ka = grpcclient.KeepAliveOptions()
    low_ms = max(10, round(retry.backoff_s * 1000))
    high_ms = max(low_ms, round(retry.backoff_max_s * 1000))
    args: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(ka.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", low_ms),
        ("grpc.min_reconnect_backoff_ms", low_ms),
        ("grpc.max_reconnect_backoff_ms", high_ms),
        ("grpc.service_config", json.dumps(retry.service_config())),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if ssl_target_name is not None:
        args.append(("grpc.ssl_target_name_override", ssl_target_name))
    return args


def grpc_target(url: str) -> tuple[str, tuple[str, ...]]:
    """(the gRPC target, the addresses it names) for ``url``.

    One address is used as it is (``host:port``, or any gRPC target such as
    ``dns:///triton-headless:8001``, which gRPC resolves to every replica). Several comma-separated
    ``host:port`` become one ``ipv4:`` (or ``ipv6:``) target that ``round_robin`` balances; host
    names among them are resolved once, here (IPv4 preferred).
    """
    parts = [p.strip() for p in url.split(",")]
    if not all(parts):
        raise ValueError(f"url {url!r} has an empty address; separate host:port addresses with commas")
    if len(parts) == 1:
        return parts[0], (parts[0],)
    endpoints: dict[tuple[str, int], ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for part in parts:
        host, sep, port_text = part.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"address {part!r} in url {url!r} must be host:port (several: host:port,host:port)")
        port = int(port_text)
        for ip in _resolve(host, port, part):
            endpoints[(str(ip), port)] = ip
    versions = {ip.version for ip in endpoints.values()}
    if len(versions) > 1:
        raise ValueError(f"url {url!r} mixes IPv4 and IPv6 addresses; gRPC balances one family per channel")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in endpoints), tuple(parts)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in endpoints), tuple(parts)


def _resolve(host: str, port: int, part: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"address {part!r}: cannot resolve {host!r} ({e})") from e
    ips = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos))
    v4: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip for ip in ips if ip.version == 4]
    return v4 or ips


class HeaderPlugin(grpcclient.InferenceServerClientPlugin):  # type: ignore[misc]  # untyped base
    """Adds ``headers`` (gRPC metadata) and a fresh ``traceparent`` to every call of the tritonclient it serves."""

    def __init__(self, headers: Mapping[str, str], tracer: CallTracer) -> None:
        self.headers = dict(headers)
        self.tracer = tracer

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)
        request.headers[TRACEPARENT] = self.tracer.next_header()


# ---- pure request planning ---------------------------------------------------------


@dataclass(frozen=True)
class ChunkRow:
    """One Triton call, a batch of one row: candidates ``[start, stop)`` of request number ``request``."""

    request: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def split_evenly(n: int, limit: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into the fewest ``[start, stop)`` pieces of at most ``limit``, sizes within 1 of each other.

    Even pieces keep every call of a long list about the same size:
    1025 candidates with ``limit=1024`` become 513 + 512, not 1024 + 1.
    """
    if n < 1 or limit < 1:
        raise ValueError(f"split_evenly needs n >= 1 and limit >= 1, got n={n} limit={limit}")
    pieces = -(-n // limit)
    base, extra = divmod(n, pieces)
    bounds, start = [], 0
    for k in range(pieces):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def plan_calls(candidate_counts: Sequence[int], max_candidates: int) -> list[ChunkRow]:
    """The Triton calls for requests with ``candidate_counts`` candidates each: one ``B=1`` call per chunk.

    Every request's candidates are split by :func:`split_evenly` into chunks of at most
    ``max_candidates``; each chunk is a call of its own, in request order, then candidate order.
    Together the calls cover every candidate of every request exactly once.

    Why never several rows in one call (neither several users nor several chunks of one user):
    Triton's response cache on ``user_encoder`` keys on the bytes of the whole request it is given.
    Rows packed into one call make one key for the lot, which no later request repeats: no chunk
    can hit another, the next page of any of those users misses, and the encoder computes a user
    once per row of the call. A ``B=1`` call carries the user's own encoder inputs
    (:func:`encoder_inputs`), the same bytes on every chunk and on every later request with an
    unchanged history, so each of them after the first is a hit. Packing used to save RPCs; the
    server's dynamic batcher batches the single-row calls behind the cache lookup (same-shape
    requests share one ONNX Runtime run), and the clients keep ``max_in_flight`` calls in flight.
    """
    return [
        ChunkRow(i, start, stop)
        for i, n in enumerate(candidate_counts)
        for start, stop in split_evenly(n, max_candidates)
    ]


def encoder_inputs(request: ScoreRequest, spec: ServingSpec) -> dict[str, I64]:
    """``user_encoder``'s inputs of one request: history ``[1, Nb, Tb]`` and ``request_scenario`` ``[1, 1]``.

    The history is cut into blocks by ``spec``'s layout and behaviour vocabulary (the server's)
    at this user's own Tb (:func:`~contract.blocks.build_blocks`), so the tensors depend on the
    user's history, the scenario and the served layout alone, never on other requests: the same
    bytes in every chunk and in every later request of an unchanged history, which is what
    Triton's response cache needs for a hit. ``request`` must be validated.
    """
    blocks = build_blocks(request.history, spec)
    return {
        **{HISTORY_TENSOR[f]: getattr(blocks, f)[None] for f in HISTORY_FIELDS},
        REQUEST_SCENARIO: np.array([[request.scenario]], dtype=np.int64),
    }


def build_call_inputs(
    calls: Sequence[ChunkRow], requests: Sequence[ScoreRequest], spec: ServingSpec
) -> list[dict[str, I64]]:
    """The contract tensors of each call: history ``[1, Nb, Tb]``, request ``[1, 1]``, candidates ``[1, N]``.

    ``requests`` must be validated (:func:`~client.validation.validate_request`); ``calls`` come
    from :func:`plan_calls`. A request's :func:`encoder_inputs` are built once and shared by all
    of its chunks (the very same arrays); each chunk adds its own candidates, ``N`` = its size.
    """
    encoder: dict[int, dict[str, I64]] = {}
    out = []
    for row in calls:
        request = requests[row.request]
        if row.request not in encoder:
            encoder[row.request] = encoder_inputs(request, spec)
        out.append(
            {
                **encoder[row.request],
                REQUEST_TIMESTAMP: np.array([[request.timestamp]], dtype=np.int64),
                CANDIDATE_INPUT: np.asarray(request.candidates, dtype=np.int64)[None, row.start : row.stop],
            }
        )
    return out


def assemble_scores(
    calls: Sequence[ChunkRow], call_scores: Sequence[F32], candidate_counts: Sequence[int], n_tasks: int
) -> list[F32]:
    """Per-request ``[N_i, n_tasks]`` scores, in candidate order, from each call's ``[1, N, n_tasks]``."""
    out = [np.empty((n, n_tasks), dtype=np.float32) for n in candidate_counts]
    filled = [0] * len(candidate_counts)
    for row, scores in zip(calls, call_scores, strict=True):
        out[row.request][row.start : row.stop] = scores[0]
        filled[row.request] += row.size
    if filled != list(candidate_counts):
        raise AssertionError(f"call plan covered {filled} candidates, requests have {list(candidate_counts)}")
    return out


def check_scores(scores: Any, rows: int, width: int, spec: ServingSpec) -> F32:
    """The ``scores`` output of one call, held to the contract: FP32 ``[B, N, n_tasks]``."""
    if scores is None:
        raise ServerError(f"the response has no {SCORES_OUTPUT!r} output")
    arr = np.asarray(scores)
    expected = (rows, width, spec.n_tasks)
    if arr.shape != expected or arr.dtype != np.float32:
        raise ServerError(
            f"{SCORES_OUTPUT!r} came back {arr.dtype} {tuple(arr.shape)}; the contract says float32 {expected} "
            f"(B={rows}, N={width}, n_tasks={spec.n_tasks})"
        )
    return arr


def spec_from_model_config(config: Mapping[str, Any], model: str = ENSEMBLE) -> ServingSpec:
    """The :class:`ServingSpec` published by ``get_model_config(model, as_json=True)``.

    Accepts the whole response (``{"config": {...}}``) or the config itself; checks that the
    published block layout and vocabularies are usable and that Triton's own ``max_batch_size``
    and input names agree with the contract.
    """
    cfg = config.get("config", config)
    raw = cfg.get("parameters", {})
    params = {str(k): str(v.get("string_value", "")) if isinstance(v, Mapping) else str(v) for k, v in raw.items()}
    try:
        spec = ServingSpec.from_parameters(params)
        check_spec(spec)
    except (ValueError, KeyError, TypeError) as e:
        raise ServerError(f"model {model!r} publishes no usable serving spec: {e}") from e
    triton_mbs = cfg.get("max_batch_size")
    if triton_mbs is not None and int(triton_mbs) != spec.max_batch_size:
        raise ServerError(
            f"model {model!r}: config max_batch_size={triton_mbs} but parameters say "
            f"max_batch_size={spec.max_batch_size}; regenerate the model repository"
        )
    served = {str(i.get("name")) for i in cfg.get("input", [])}
    missing = [n for n in CONTRACT_INPUTS if served and n not in served]
    if missing:
        raise ServerError(f"model {model!r} lacks contract inputs {missing}; it serves {sorted(served)}")
    return spec


def make_infer_inputs(inputs: Mapping[str, Any]) -> list[Any]:
    """``tritonclient`` inputs for raw arrays; the datatype follows each array's numpy dtype."""
    out = []
    for name, value in inputs.items():
        arr = np.ascontiguousarray(value)
        datatype = np_to_triton_dtype(arr.dtype)
        if datatype is None:
            raise RequestError(name, f"dtype {arr.dtype} has no Triton datatype")
        tensor = grpcclient.InferInput(name, list(arr.shape), datatype)
        try:
            tensor.set_data_from_numpy(arr)
        except InferenceServerException as e:
            raise RequestError(name, f"cannot be serialised: {e.message()}") from e
        out.append(tensor)
    return out


# ---- flows: the client's logic, written once; a step is the only thing a transport runs -----------


@dataclass(frozen=True)
class Rpc:
    """Call ``method(*args, client_timeout=timeout_s, **kwargs)`` of the tritonclient (sync or asyncio)."""

    method: str
    timeout_s: float
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Concurrently:
    """Run ``flows`` and return their results in order, ``max_in_flight`` at a time (asyncio tasks,
    or threads of the blocking client)."""

    flows: Sequence[Flow[Any]]


Step = Rpc | Sleep | Concurrently
Flow = Generator[Step, Any, T]  # yields steps, is sent their results (or thrown their errors), returns T


class _ClientCore:
    """Options, channel arguments and every flow; subclasses add the transport."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = ENSEMBLE,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        backoff_max_s: float = 1.0,
        wait_for_ready: bool = True,
        headers: Mapping[str, str] | None = None,
        traceparent: str | None = None,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        spec: ServingSpec | None = None,
        max_in_flight: int = 4,
        allow: Allow | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight} must be >= 1")
        self.max_in_flight = max_in_flight
        self.url = url
        self.target, self.addresses = grpc_target(url)
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retry = RetryPolicy(retries, backoff_s, backoff_max_s, wait_for_ready)
        self.allow = allow if allow is not None else Allow()
        # gRPC metadata keys are lowercase ASCII; uppercase ones make every call fail
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        self.tracer = CallTracer(traceparent if traceparent is not None else self.headers.pop(TRACEPARENT, None))
        certs = {
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        given = {k: str(v) for k, v in certs.items() if v is not None}
        if given and not ssl:
            raise ValueError(f"{sorted(given)} given but ssl=False; pass ssl=True to use TLS")
        for k, path in given.items():
            if not Path(path).is_file():
                raise ValueError(f"{k}: no such file {path!r}")
        # several addresses: the certificate must name the first host (gRPC checks one name per channel)
        tls_name = self.addresses[0].rpartition(":")[0].strip("[]") if ssl and len(self.addresses) > 1 else None
        self._triton_kwargs: dict[str, Any] = {
            "url": self.target,
            "ssl": ssl,
            **given,
            "channel_args": channel_args(self.retry, tls_name),
        }
        if spec is not None:
            check_spec(spec)
        self._spec = spec
        self._open()

    def _open(self) -> None:
        """Per-client setup once the options are parsed (the gRPC channel)."""
        raise NotImplementedError

    def _register_headers(self, triton: Any) -> Any:
        triton.register_plugin(HeaderPlugin(self.headers, self.tracer))
        return triton

    # -- one RPC: the hand-written retry of a loading model, and what a failure means
    def _call(self, what: str, method: str, *args: Any, waits: bool = True, **kwargs: Any) -> Flow[Any]:
        """One call within ``timeout_s``; ``waits=False`` for health probes (one attempt, as it comes)."""
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return (yield Rpc(method, max(deadline - time.monotonic(), 1e-3), args, kwargs))
            except InferenceServerException as e:
                if waits and is_model_loading(e) and attempt <= self.retry.retries:
                    delay = self.retry.delay(attempt)
                    if time.monotonic() + delay < deadline:
                        yield Sleep(delay)
                        continue
                if waits and self.retry.wait_for_ready and e.status() == DEADLINE_EXCEEDED:
                    reason = yield from self._unreachable()
                    if reason is not None:
                        raise ServerUnavailableError(
                            f"{what} at {self.url} failed [{UNAVAILABLE}]: no server accepted the call within "
                            f"timeout_s={self.timeout_s:g} s ({reason})",
                            status=UNAVAILABLE,
                            server_message=reason,
                            attempts=attempt,
                        ) from e
                raise _server_error(e, what, self.url, attempt) from e

    def _unreachable(self) -> Flow[str | None]:
        """After a waiting call's deadline passed: why no server is reachable, or None if one is
        (then the deadline was the server's slowness, and stays DEADLINE_EXCEEDED)."""
        try:
            yield Rpc("is_server_live", PROBE_TIMEOUT_S)
        except InferenceServerException as e:
            if e.status() in (UNAVAILABLE, DEADLINE_EXCEEDED):
                return str(e.message() or "no connection")
        return None

    # -- the served spec
    def _spec_flow(self) -> Flow[ServingSpec]:
        if self._spec is None:
            config = yield from self._call(
                f"get_model_config({self.model!r})", "get_model_config", self.model, as_json=True
            )
            self._spec = spec_from_model_config(config, self.model)
        return self._spec

    # -- inference
    def _infer_flow(self, inputs: Mapping[str, Any], validate: bool = False) -> Flow[npt.NDArray[Any]]:
        if validate:
            spec = yield from self._spec_flow()
            inputs = validate_inputs(inputs, spec, self.allow)
        tensors = make_infer_inputs(inputs)
        outputs = [grpcclient.InferRequestedOutput(SCORES_OUTPUT)]
        result = yield from self._call(f"infer({self.model!r})", "infer", self.model, tensors, outputs=outputs)
        scores = result.as_numpy(SCORES_OUTPUT)
        if scores is None:
            raise ServerError(f"infer({self.model!r}) at {self.url}: the response has no {SCORES_OUTPUT!r} output")
        return np.asarray(scores)

    def _prepare(self, requests: Sequence[ScoreRequest], fields: Sequence[str]) -> list[ScoreRequest]:
        """Checked before any network call: the integer rule, shapes, padding items and timestamps."""
        return [validate_request(r, f, allow=self.allow) for r, f in zip(requests, fields, strict=True)]

    def _single(
        self, history: EventHistory, candidates: Sequence[int] | I64, scenario: int, timestamp: int
    ) -> Flow[list[F32]]:
        request = ScoreRequest(history, candidates, scenario, timestamp)
        return self._score_flow(self._prepare([request], [""]), [""])

    def _batch(self, requests: Sequence[ScoreRequest]) -> Flow[list[F32]]:
        fields = [f"requests[{i}]" for i in range(len(requests))]
        return self._score_flow(self._prepare(requests, fields), fields)

    def _score_flow(self, requests: list[ScoreRequest], fields: Sequence[str]) -> Flow[list[F32]]:
        if not requests:
            return []
        spec = yield from self._spec_flow()
        for r, f in zip(requests, fields, strict=True):
            check_served(r, f, spec, self.allow)  # the server's vocabularies
        counts = [len(r.candidates) for r in requests]
        calls = plan_calls(counts, spec.max_candidates)
        inputs = [validate_inputs(a, spec, self.allow) for a in build_call_inputs(calls, requests, spec)]
        # Two waves: every request's first chunk, then all other chunks. Triton stores an encoder
        # response in its cache only once it is computed, so chunks sent beside the first would all
        # miss (and compute the same keys/values again); sent after it, every one is a hit.
        first = [k for k, c in enumerate(calls) if c.start == 0]
        rest = [k for k, c in enumerate(calls) if c.start > 0]
        raw: dict[int, npt.NDArray[Any]] = {}
        for wave in (first, rest):
            if wave:
                answers = yield Concurrently([self._infer_flow(inputs[k]) for k in wave])
                raw.update(zip(wave, answers, strict=True))
        results = [check_scores(raw[k], 1, a[CANDIDATE_INPUT].shape[1], spec) for k, a in enumerate(inputs)]
        return assemble_scores(calls, results, counts, spec.n_tasks)

    # -- health
    def _health_flow(self) -> Flow[dict[str, Any]]:
        """``{url, model, server_live, server_ready, model_ready, ready, error, served}``; never raises.

        One fail-fast attempt per probe; ``served`` is the served spec (preset, limits,
        vocabularies, blocks, tasks) once the model is ready."""
        out: dict[str, Any] = {"url": self.url, "model": self.model, "server_live": False, "server_ready": False,
                               "model_ready": False, "ready": False, "error": None, "served": None}  # fmt: skip
        probes = (
            ("server_live", "is_server_live", ()),
            ("server_ready", "is_server_ready", ()),
            ("model_ready", "is_model_ready", (self.model,)),
        )
        try:
            for key, method, args in probes:
                out[key] = bool((yield from self._call(key, method, *args, waits=False)))
            out["ready"] = bool(out["server_ready"] and out["model_ready"])
            if out["ready"]:
                spec = yield from self._spec_flow()
                out["served"] = json.loads(spec.to_json())
        except ServerError as e:
            out["error"] = str(e)
        return out


def _advance(flow: Flow[T], value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Resume ``flow`` with a step's result or error: ``(True, next step)`` or ``(False, its return value)``."""
    try:
        return True, (flow.throw(error) if error is not None else flow.send(value))
    except StopIteration as stop:
        return False, stop.value


# ---- blocking client -------------------------------------------------------------


class AstroClient(_ClientCore):
    """Blocking client of the ``astro`` ensemble. Thread-safe; use as a context manager or call :meth:`close`.

    ``url``: ``host:port``, any gRPC target, or several ``host:port`` comma-separated (balanced
    round-robin). ``timeout_s`` is the deadline of one call, its waiting and retries included.
    ``wait_for_ready``, ``retries``, ``backoff_s``, ``backoff_max_s``: see :class:`RetryPolicy`.
    ``headers`` go with every call (keys lowercased, as gRPC requires), and a W3C ``traceparent``
    (:mod:`client.tracing`): in the caller's trace when ``traceparent`` is given, else a new trace
    per call. With ``ssl=True``, the PEM files ``root_certificates``, ``private_key`` and
    ``certificate_chain`` go to ``tritonclient``.
    ``allow``: likely mistakes to send anyway (:class:`~contract.validation.Allow`). Pass ``spec``
    to skip fetching it. The calls of one :meth:`score_batch` (or of a chunked :meth:`score`) run
    in threads, at most ``max_in_flight`` at a time.
    """

    def _open(self) -> None:
        self._triton = self._register_headers(grpcclient.InferenceServerClient(**self._triton_kwargs))

    def _run(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            running, step = _advance(flow, value, error)
            if not running:
                result: T = step
                return result
            value, error = None, None
            try:
                value = self._execute(step)
            except Exception as e:  # handed to the flow, which decides (retry, map, or let it propagate)
                error = e

    def _execute(self, step: Step) -> Any:
        if isinstance(step, Rpc):
            return getattr(self._triton, step.method)(*step.args, client_timeout=step.timeout_s, **step.kwargs)
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        flows = list(step.flows)
        if len(flows) < 2 or self.max_in_flight < 2:
            return [self._run(f) for f in flows]
        # a pool per step: a flow run in a worker never waits on a worker of the same pool
        with ThreadPoolExecutor(min(self.max_in_flight, len(flows)), thread_name_prefix="astro-call") as pool:
            futures = [pool.submit(self._run, f) for f in flows]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # one call failed: send no more (those running finish before the pool closes)
                    f.cancel()
                raise

    def get_spec(self) -> ServingSpec:
        """The served limits, vocabularies and block layout, fetched from the ensemble config on first use."""
        return self._run(self._spec_flow())

    def infer_arrays(self, inputs: Mapping[str, Any], *, validate: bool = False) -> npt.NDArray[Any]:
        """Send raw contract tensors as they are and return the ``scores`` output.

        Nothing is checked or cast unless ``validate=True`` (then :func:`validate_inputs`
        against the served spec), so QA can probe how the server handles bad input.
        Server errors raise :class:`ServerError` with the server's message.
        """
        return self._run(self._infer_flow(inputs, validate))

    def score(self, history: EventHistory, candidates: Sequence[int] | I64, scenario: int, timestamp: int) -> F32:
        """Scores ``[N, n_tasks]`` float32 of one user's ``N`` candidates, in candidate order."""
        return self._run(self._single(history, candidates, scenario, timestamp))[0]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[F32]:
        """``[N_i, n_tasks]`` scores per request, in order: one ``B=1`` call per user and chunk (:func:`plan_calls`)."""
        return self._run(self._batch(requests))

    def health(self) -> dict[str, Any]:
        """``{url, model, server_live, server_ready, model_ready, ready, error, served}``; never raises."""
        return self._run(self._health_flow())

    def is_ready(self) -> bool:
        """Server ready and the ensemble ready."""
        return bool(self.health()["ready"])

    def close(self) -> None:
        self._triton.close()

    def __enter__(self) -> AstroClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---- asyncio client --------------------------------------------------------------


class AsyncAstroClient(_ClientCore):
    """asyncio client of the ``astro`` ensemble; same options as :class:`AstroClient`.

    The gRPC channel opens on first use, inside the running event loop. The calls of one
    :meth:`score_batch` run concurrently, at most ``max_in_flight`` at a time. Use
    ``async with`` or ``await close()``.
    """

    def _open(self) -> None:
        self._triton_client: Any = None

    def _client(self) -> Any:
        if self._triton_client is None:
            self._triton_client = self._register_headers(grpcclient_aio.InferenceServerClient(**self._triton_kwargs))
        return self._triton_client

    async def _run(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            running, step = _advance(flow, value, error)
            if not running:
                result: T = step
                return result
            value, error = None, None
            try:
                value = await self._execute(step)
            except Exception as e:  # handed to the flow, which decides (retry, map, or let it propagate)
                error = e

    async def _execute(self, step: Step) -> Any:
        if isinstance(step, Rpc):
            method = getattr(self._client(), step.method)
            return await method(*step.args, client_timeout=step.timeout_s, **step.kwargs)
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        gate = asyncio.Semaphore(self.max_in_flight)

        async def one(flow: Flow[Any]) -> Any:
            async with gate:
                return await self._run(flow)

        tasks = [asyncio.ensure_future(one(f)) for f in step.flows]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one call failed: do not leave the others running
                task.cancel()
            raise

    async def get_spec(self) -> ServingSpec:
        """As :meth:`AstroClient.get_spec`."""
        return await self._run(self._spec_flow())

    async def infer_arrays(self, inputs: Mapping[str, Any], *, validate: bool = False) -> npt.NDArray[Any]:
        """As :meth:`AstroClient.infer_arrays`."""
        return await self._run(self._infer_flow(inputs, validate))

    async def score(self, history: EventHistory, candidates: Sequence[int] | I64, scenario: int, timestamp: int) -> F32:
        """As :meth:`AstroClient.score`."""
        return (await self._run(self._single(history, candidates, scenario, timestamp)))[0]

    async def score_batch(self, requests: Sequence[ScoreRequest]) -> list[F32]:
        """As :meth:`AstroClient.score_batch`; the calls run concurrently."""
        return await self._run(self._batch(requests))

    async def health(self) -> dict[str, Any]:
        """As :meth:`AstroClient.health`."""
        return await self._run(self._health_flow())

    async def is_ready(self) -> bool:
        """Server ready and the ensemble ready."""
        return bool((await self.health())["ready"])

    async def close(self) -> None:
        if self._triton_client is not None:
            await self._triton_client.close()
            self._triton_client = None

    async def __aenter__(self) -> AsyncAstroClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
