"""gRPC clients of the ``astro`` Triton ensemble.

:class:`AstroClient` (blocking, over ``tritonclient.grpc``) and :class:`AsyncAstroClient`
(asyncio, over ``tritonclient.grpc.aio``) share everything but the I/O:

- the served limits and block layout come from the ensemble's config ``parameters``
  (:class:`~contract.serving_spec.ServingSpec`), fetched once on first use and cached;
- one user's history is cut into ``[Nb, Tb]`` blocks by :mod:`contract.blocks`, the very
  code the model was trained with;
- :func:`plan_calls` splits candidate lists longer than ``max_candidates`` and batches
  larger than ``max_batch_size`` into Triton calls; :func:`build_call_inputs` pads each
  call's candidate rows to a common ``N`` (repeating a row's last id: a candidate's score
  never depends on the other candidates) and :func:`assemble_scores` drops the padding
  and puts every score back in request order;
- UNAVAILABLE (and NOT_FOUND for a model still loading) is retried with exponential backoff
  inside the call's deadline
  (``timeout_s``); every other server error is raised at once as :class:`ServerError`
  carrying the server's message.

Imports numpy, tritonclient and torch-free ``model`` modules only (``pip install .[client]``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.validation import (
    CONTRACT_INPUTS,
    I64,
    RequestError,
    ScoreRequest,
    check_spec,
    validate_inputs,
    validate_request,
)
from contract.blocks import EventHistory, stack_blocks
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, ENSEMBLE, HISTORY_INPUTS, SCORES_OUTPUT

F32 = npt.NDArray[np.float32]
T = TypeVar("T")

DEFAULT_URL = "127.0.0.1:8001"
UNAVAILABLE = "StatusCode.UNAVAILABLE"  # how tritonclient spells grpc.StatusCode.UNAVAILABLE in .status()
NOT_FOUND = "StatusCode.NOT_FOUND"
LOADING = "has no available versions"  # Triton's NOT_FOUND for a known model whose versions are still loading


def is_transient(e: InferenceServerException) -> bool:
    """Worth retrying: the server is unreachable, or up but the model is still (re)loading.
    A model name the server does not know at all is NOT_FOUND without LOADING, and is final."""
    return e.status() == UNAVAILABLE or (e.status() == NOT_FOUND and LOADING in (e.message() or ""))


# ---- errors ------------------------------------------------------------------------


class ServerError(RuntimeError):
    """The server (or the channel to it) failed a call; ``server_message`` is the server's own text."""

    def __init__(
        self, message: str, *, status: str | None = None, server_message: str | None = None, attempts: int = 1
    ):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.attempts = attempts


class ServerUnavailableError(ServerError):
    """UNAVAILABLE on every attempt: no server at the url, or it is not accepting calls."""


def _server_error(e: InferenceServerException, what: str, url: str, attempts: int) -> ServerError:
    status = e.status()
    message = e.message()
    cls = ServerUnavailableError if status == UNAVAILABLE else ServerError
    tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts > 1 else ""
    return cls(
        f"{what} at {url} failed{tries} [{status}]: {message}", status=status, server_message=message, attempts=attempts
    )


# ---- retry policy ------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retry UNAVAILABLE up to ``retries`` times, sleeping ``backoff_s * 2**k`` (capped) between tries."""

    retries: int = 2
    backoff_s: float = 0.05
    backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries={self.retries} must be >= 0")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"backoff_s={self.backoff_s}, backoff_max_s={self.backoff_max_s} must be >= 0")

    def delay(self, attempt: int) -> float:
        """Sleep after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


def channel_args(retry: RetryPolicy) -> list[tuple[str, int | bool]]:
    """tritonclient's default channel options, with gRPC's reconnect backoff matched to ``retry``.

    After a refused connection gRPC waits its reconnect backoff (1 s by default, then
    growing, jittered) before dialling again, and fails every call in between at once
    with UNAVAILABLE. Left at the default, retries spaced ``backoff_s`` apart would never
    reach a server that came up after the first attempt.
    """
    ka = grpcclient.KeepAliveOptions()
    low_ms = max(10, round(retry.backoff_s * 1000))
    high_ms = max(low_ms, round(retry.backoff_max_s * 1000))
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", low_ms),
        ("grpc.min_reconnect_backoff_ms", low_ms),
        ("grpc.max_reconnect_backoff_ms", high_ms),
    ]


# ---- pure request planning ---------------------------------------------------------


@dataclass(frozen=True)
class ChunkRow:
    """One row of a Triton call: candidates ``[start, stop)`` of request number ``request``."""

    request: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def split_evenly(n: int, limit: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into the fewest ``[start, stop)`` pieces of at most ``limit``, sizes within 1 of each other.

    Even pieces keep the padding of a call (rows padded to the longest) small:
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


def plan_calls(candidate_counts: Sequence[int], max_batch_size: int, max_candidates: int) -> list[list[ChunkRow]]:
    """Rows of each Triton call for requests with ``candidate_counts`` candidates each.

    Every request's candidates are split by :func:`split_evenly` into rows of at most
    ``max_candidates``; rows are then packed, longest first (rows of similar length
    share a call, so little padding), into calls of at most ``max_batch_size`` rows.
    Together the rows cover every candidate of every request exactly once.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
    rows = [
        ChunkRow(i, start, stop)
        for i, n in enumerate(candidate_counts)
        for start, stop in split_evenly(n, max_candidates)
    ]
    rows.sort(key=lambda r: r.size, reverse=True)  # stable: equal sizes keep request order
    calls = [rows[k : k + max_batch_size] for k in range(0, len(rows), max_batch_size)]
    return [sorted(call, key=lambda r: (r.request, r.start)) for call in calls]


def build_call_inputs(rows: Sequence[ChunkRow], requests: Sequence[ScoreRequest], spec: ServingSpec) -> dict[str, I64]:
    """The contract tensors of one call: history ``[B, Nb, Tb]``, request ``[B, 1]``, candidates ``[B, N]``.

    ``requests`` must be validated (:func:`~client.validation.validate_request`). A user
    split over several rows has its blocks cut once. ``N`` is the longest row; shorter rows
    repeat their last id, and :func:`assemble_scores` drops those columns.
    """
    users = sorted({r.request for r in rows})
    where = {u: k for k, u in enumerate(users)}
    blocks = stack_blocks([requests[u].history for u in users], spec)  # [U, Nb, Tb] each
    take = np.array([where[r.request] for r in rows], dtype=np.int64)  # row -> unique user

    width = max(r.size for r in rows)
    cands = np.empty((len(rows), width), dtype=np.int64)  # [B, N]
    for i, r in enumerate(rows):
        ids = np.asarray(requests[r.request].candidates, dtype=np.int64)[r.start : r.stop]
        cands[i, : r.size] = ids
        cands[i, r.size :] = ids[-1]
    return {
        HISTORY_INPUTS[0]: blocks.item_ids[take],
        HISTORY_INPUTS[1]: blocks.behaviors[take],
        HISTORY_INPUTS[2]: blocks.scenarios[take],
        HISTORY_INPUTS[3]: blocks.timestamps[take],
        "request_scenario": np.array([[requests[r.request].scenario] for r in rows], dtype=np.int64),
        "request_timestamp": np.array([[requests[r.request].timestamp] for r in rows], dtype=np.int64),
        CANDIDATE_INPUT: cands,
    }


def assemble_scores(
    calls: Sequence[Sequence[ChunkRow]], call_scores: Sequence[F32], candidate_counts: Sequence[int], n_tasks: int
) -> list[F32]:
    """Per-request ``[N_i, n_tasks]`` scores from each call's ``[B, N, n_tasks]``, padding columns dropped."""
    out = [np.empty((n, n_tasks), dtype=np.float32) for n in candidate_counts]
    filled = [0] * len(candidate_counts)
    for rows, scores in zip(calls, call_scores, strict=True):
        for i, r in enumerate(rows):
            out[r.request][r.start : r.stop] = scores[i, : r.size]
            filled[r.request] += r.size
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
    published block layout is usable and that Triton's own ``max_batch_size`` and input
    names agree with the contract.
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


# ---- shared client state -----------------------------------------------------------


class _ClientBase:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = ENSEMBLE,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        backoff_max_s: float = 1.0,
        headers: Mapping[str, str] | None = None,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        spec: ServingSpec | None = None,
        max_in_flight: int = 4,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight} must be >= 1")
        self.max_in_flight = max_in_flight
        self.url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retry = RetryPolicy(retries, backoff_s, backoff_max_s)
        # gRPC metadata keys are lowercase ASCII; uppercase ones make every call fail
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
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
        self._triton_kwargs: dict[str, Any] = {
            "url": url,
            "ssl": ssl,
            **given,
            "channel_args": channel_args(self.retry),
        }
        if spec is not None:
            check_spec(spec)
        self._spec = spec
        self._open()

    def _open(self) -> None:
        """Per-client setup once the options are parsed (locks, the gRPC channel)."""
        raise NotImplementedError

    def _parse_config(self, config: Mapping[str, Any]) -> ServingSpec:
        return spec_from_model_config(config, self.model)

    def _retry_or_raise(self, e: InferenceServerException, what: str, attempt: int, deadline: float) -> float:
        """The sleep before the next attempt, or raise the mapped :class:`ServerError`."""
        if is_transient(e) and attempt <= self.retry.retries:
            delay = self.retry.delay(attempt)
            if time.monotonic() + delay < deadline:
                return delay
        raise _server_error(e, what, self.url, attempt) from e

    def _health_report(self) -> dict[str, Any]:
        """What health() fills in: nothing confirmed yet."""
        return {"url": self.url, "model": self.model, "server_live": False, "server_ready": False,
                "model_ready": False, "ready": False, "error": None}  # fmt: skip

    @staticmethod
    def _prepare(requests: Sequence[ScoreRequest]) -> list[ScoreRequest]:
        return [validate_request(r, f"requests[{i}]") for i, r in enumerate(requests)]

    @staticmethod
    def _single(history: EventHistory, candidates: Sequence[int] | I64, scenario: int, timestamp: int) -> ScoreRequest:
        return validate_request(ScoreRequest(history, candidates, scenario, timestamp))


# ---- blocking client -------------------------------------------------------------


class AstroClient(_ClientBase):
    """Blocking client of the ``astro`` ensemble. Thread-safe; use as a context manager or call :meth:`close`.

    ``timeout_s`` is the deadline of one RPC, its UNAVAILABLE retries included; ``retries``
    more attempts follow a first UNAVAILABLE, ``backoff_s * 2**k`` seconds apart (capped at
    ``backoff_max_s``). ``headers`` go with every call (keys lowercased, as gRPC requires).
    With ``ssl=True``, the PEM files ``root_certificates``, ``private_key`` and
    ``certificate_chain`` go to ``tritonclient``. Pass ``spec`` to skip fetching it.
    ``max_in_flight`` is for :class:`AsyncAstroClient`; this client sends chunks in order.
    """

    def _open(self) -> None:
        self._spec_lock = threading.Lock()
        self._triton = grpcclient.InferenceServerClient(**self._triton_kwargs)

    # -- plumbing
    def _call(self, what: str, fn: Callable[[float], T], *, retry: bool = True) -> T:
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(max(deadline - time.monotonic(), 1e-3))
            except InferenceServerException as e:
                if not retry:
                    raise _server_error(e, what, self.url, attempt) from e
                time.sleep(self._retry_or_raise(e, what, attempt, deadline))

    def get_spec(self) -> ServingSpec:
        """The served limits and block layout, fetched from the ensemble config on first use."""
        with self._spec_lock:
            if self._spec is None:
                config = self._call(
                    f"get_model_config({self.model!r})",
                    lambda t: self._triton.get_model_config(
                        self.model, headers=self.headers, as_json=True, client_timeout=t
                    ),
                )
                self._spec = self._parse_config(config)
            return self._spec

    # -- inference
    def infer_arrays(self, inputs: Mapping[str, Any], *, validate: bool = False) -> npt.NDArray[Any]:
        """Send raw contract tensors as they are and return the ``scores`` output.

        Nothing is checked or cast unless ``validate=True`` (then :func:`validate_inputs`
        against the served spec), so QA can probe how the server handles bad input.
        Server errors raise :class:`ServerError` with the server's message.
        """
        if validate:
            inputs = validate_inputs(inputs, self.get_spec())
        tensors = make_infer_inputs(inputs)
        outputs = [grpcclient.InferRequestedOutput(SCORES_OUTPUT)]
        result = self._call(
            f"infer({self.model!r})",
            lambda t: self._triton.infer(self.model, tensors, outputs=outputs, headers=self.headers, client_timeout=t),
        )
        scores = result.as_numpy(SCORES_OUTPUT)
        if scores is None:
            raise ServerError(f"infer({self.model!r}) at {self.url}: the response has no {SCORES_OUTPUT!r} output")
        return np.asarray(scores)

    def score(self, history: EventHistory, candidates: Sequence[int] | I64, scenario: int, timestamp: int) -> F32:
        """Scores ``[N, n_tasks]`` float32 of one user's ``N`` candidates, in candidate order."""
        return self._score_valid([self._single(history, candidates, scenario, timestamp)])[0]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[F32]:
        """``[N_i, n_tasks]`` scores per request, in order, sent in as few Triton calls as the limits allow."""
        return self._score_valid(self._prepare(requests))

    def _score_valid(self, requests: list[ScoreRequest]) -> list[F32]:
        if not requests:
            return []
        spec = self.get_spec()
        counts = [len(r.candidates) for r in requests]
        calls = plan_calls(counts, spec.max_batch_size, spec.max_candidates)
        results = []
        for rows in calls:
            arrays = validate_inputs(build_call_inputs(rows, requests, spec), spec)
            raw = self.infer_arrays(arrays)
            results.append(check_scores(raw, len(rows), arrays[CANDIDATE_INPUT].shape[1], spec))
        return assemble_scores(calls, results, counts, spec.n_tasks)

    # -- health
    def health(self) -> dict[str, Any]:
        """``{url, model, server_live, server_ready, model_ready, ready, error}``; one attempt each, never raises."""
        out = self._health_report()
        probes: list[tuple[str, Callable[[float], bool]]] = [
            ("server_live", lambda t: bool(self._triton.is_server_live(headers=self.headers, client_timeout=t))),
            ("server_ready", lambda t: bool(self._triton.is_server_ready(headers=self.headers, client_timeout=t))),
            (
                "model_ready",
                lambda t: bool(self._triton.is_model_ready(self.model, headers=self.headers, client_timeout=t)),
            ),
        ]
        try:
            for key, probe in probes:
                out[key] = self._call(key, probe, retry=False)
        except ServerError as e:
            out["error"] = str(e)
        out["ready"] = bool(out["server_ready"] and out["model_ready"])
        return out

    def is_ready(self) -> bool:
        """Server ready and the ensemble ready."""
        return bool(self.health()["ready"])

    # -- lifetime
    def close(self) -> None:
        self._triton.close()

    def __enter__(self) -> AstroClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---- asyncio client --------------------------------------------------------------


class AsyncAstroClient(_ClientBase):
    """asyncio client of the ``astro`` ensemble; same options as :class:`AstroClient`.

    The gRPC channel opens on first use, inside the running event loop. Chunks of one
    :meth:`score_batch` run concurrently, at most ``max_in_flight`` at a time. Use
    ``async with`` or ``await close()``.
    """

    def _open(self) -> None:
        self._spec_lock = asyncio.Lock()
        self._triton_client: Any = None

    def _client(self) -> Any:
        if self._triton_client is None:
            self._triton_client = grpcclient_aio.InferenceServerClient(**self._triton_kwargs)
        return self._triton_client

    async def _call(self, what: str, fn: Callable[[float], Awaitable[T]], *, retry: bool = True) -> T:
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn(max(deadline - time.monotonic(), 1e-3))
            except InferenceServerException as e:
                if not retry:
                    raise _server_error(e, what, self.url, attempt) from e
                await asyncio.sleep(self._retry_or_raise(e, what, attempt, deadline))

    async def get_spec(self) -> ServingSpec:
        """The served limits and block layout, fetched from the ensemble config on first use."""
        async with self._spec_lock:
            if self._spec is None:
                config = await self._call(
                    f"get_model_config({self.model!r})",
                    lambda t: self._client().get_model_config(
                        self.model, headers=self.headers, as_json=True, client_timeout=t
                    ),
                )
                self._spec = self._parse_config(config)
            return self._spec

    async def infer_arrays(self, inputs: Mapping[str, Any], *, validate: bool = False) -> npt.NDArray[Any]:
        """As :meth:`AstroClient.infer_arrays`."""
        if validate:
            inputs = validate_inputs(inputs, await self.get_spec())
        tensors = make_infer_inputs(inputs)
        outputs = [grpcclient.InferRequestedOutput(SCORES_OUTPUT)]
        result = await self._call(
            f"infer({self.model!r})",
            lambda t: self._client().infer(
                self.model, tensors, outputs=outputs, headers=self.headers, client_timeout=t
            ),
        )
        scores = result.as_numpy(SCORES_OUTPUT)
        if scores is None:
            raise ServerError(f"infer({self.model!r}) at {self.url}: the response has no {SCORES_OUTPUT!r} output")
        return np.asarray(scores)

    async def score(self, history: EventHistory, candidates: Sequence[int] | I64, scenario: int, timestamp: int) -> F32:
        """As :meth:`AstroClient.score`."""
        return (await self._score_valid([self._single(history, candidates, scenario, timestamp)]))[0]

    async def score_batch(self, requests: Sequence[ScoreRequest]) -> list[F32]:
        """As :meth:`AstroClient.score_batch`; the calls run concurrently."""
        return await self._score_valid(self._prepare(requests))

    async def _score_valid(self, requests: list[ScoreRequest]) -> list[F32]:
        if not requests:
            return []
        spec = await self.get_spec()
        counts = [len(r.candidates) for r in requests]
        calls = plan_calls(counts, spec.max_batch_size, spec.max_candidates)
        gate = asyncio.Semaphore(self.max_in_flight)

        async def run(rows: list[ChunkRow]) -> F32:
            arrays = validate_inputs(build_call_inputs(rows, requests, spec), spec)
            async with gate:
                raw = await self.infer_arrays(arrays)
            return check_scores(raw, len(rows), arrays[CANDIDATE_INPUT].shape[1], spec)

        tasks = [asyncio.ensure_future(run(rows)) for rows in calls]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one call failed: do not leave the others running
                task.cancel()
            raise
        return assemble_scores(calls, results, counts, spec.n_tasks)

    async def health(self) -> dict[str, Any]:
        """As :meth:`AstroClient.health`."""
        out = self._health_report()
        c = self._client()
        probes: list[tuple[str, Callable[[float], Awaitable[bool]]]] = [
            ("server_live", lambda t: c.is_server_live(headers=self.headers, client_timeout=t)),
            ("server_ready", lambda t: c.is_server_ready(headers=self.headers, client_timeout=t)),
            ("model_ready", lambda t: c.is_model_ready(self.model, headers=self.headers, client_timeout=t)),
        ]
        try:
            for key, probe in probes:
                out[key] = bool(await self._call(key, probe, retry=False))
        except ServerError as e:
            out["error"] = str(e)
        out["ready"] = bool(out["server_ready"] and out["model_ready"])
        return out

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
