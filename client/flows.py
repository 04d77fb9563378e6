"""What the clients of the ``astro`` ensemble do, written once: options and every operation as a flow.

:class:`~client.astro_client.AstroClient` (blocking) and :class:`~client.astro_client.AsyncAstroClient`
(asyncio) share one implementation of everything but the I/O: each operation is a *flow*, a
generator that yields the transport steps it needs (:class:`Rpc`, :class:`Sleep`,
:class:`Concurrently`) and gets their results back; each client only runs the steps, blocking
or awaiting. So request building, validation, call planning, retry decisions,
error mapping and result assembly exist once:

- the served limits, vocabularies and block layout come from the ensemble's config ``parameters``
  (:class:`~contract.serving_spec.ServingSpec`), fetched once on first use and cached;
- requests are checked by :mod:`contract.validation` (the integer rule, plausibility, the
  served vocabularies) before anything is sent;
- one user's history is cut into ``[Nb, Tb]`` blocks by :mod:`contract.blocks` with the
  *server's* behaviour vocabulary;
- :mod:`client.planning`: :func:`plan_calls` makes every chunk of at most ``max_candidates``
  candidates of every request a Triton call of its own (``B=1``), :func:`build_call_inputs`
  gives all chunks of a request the same encoder inputs (the user's blocks at its own Tb, the
  request scenario), byte for byte, and :func:`assemble_scores` puts every score back in
  request order. A request's first chunk is sent, and answered, before the rest: Triton's
  response cache on ``user_encoder`` then serves every later chunk (and every later request of
  an unchanged history) as a hit.

Which replica serves a call, and how failures are tried again (``lb``):

- ``"affinity"`` (the default wherever the url names more than one replica: several addresses,
  or a DNS name such as a headless Service that resolves to several): one channel per replica;
  each call goes to the replica that rendezvous hashing of its routing key picks, under a load
  bound, and fails over to the key's next replica on UNAVAILABLE or a refusal
  (:mod:`client.routing`). The key is a hash of the call's encoder inputs, or the caller's
  ``user_id``: every call that could hit Triton's response cache goes to the replica holding it.
- ``"round_robin"``: one channel over every address; gRPC waits for a server (``waitForReady``)
  and retries UNAVAILABLE and refusals with backoff, each attempt on the next address
  (:mod:`client.channel`).

Either way every inference call carries the routing key as the header
:data:`~contract.routing.ROUTE_KEY_HEADER` (a mesh's consistent hashing uses it) and what is left of
the caller's deadline: as the gRPC deadline, and split over the ensemble's queues
(:data:`~contract.admission.QUEUED_STEPS`) as Triton's per-request ``timeout``, which each queue times
afresh, so a server whose queue policy allows the override drops a request whose caller has given up
instead of starting it on a model. The client retries by hand what gRPC cannot know: a model still loading
(Triton's NOT_FOUND "has no available versions") and, with affinity, the key's next replica.
Failures raise :class:`~client.errors.ServerError` with the server's message;
:class:`~client.errors.ServerOverloadedError` when every try was refused for lack of room.
Headers given by the caller go with every call through tritonclient's ``register_plugin``.

Imports numpy, tritonclient and the torch-free ``contract`` package only (``pip install .[client]``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.channel import (
    HeaderPlugin,
    RetryPolicy,
    channel_args,
    grpc_target,
    names_hosts,
    resolve_replicas,
    url_parts,
)
from client.errors import (
    DEADLINE_EXCEEDED,
    UNAVAILABLE,
    ServerError,
    ServerUnavailableError,
    failure_kind,
    is_model_loading,
    server_error,
)
from client.planning import assemble_scores, build_call_inputs, plan_calls
from client.routing import DEFAULT_LOAD_FACTOR, DEFAULT_REFRESH_S, Router, route_key, user_route_key
from client.tracing import TRACEPARENT, CallTracer
from client.validation import I64, Allow, ScoreRequest, check_served, validate_inputs, validate_request
from client.wire import F32, check_scores, make_infer_inputs, spec_from_model_config
from contract.admission import queue_timeout_us
from contract.routing import ROUTE_KEY_HEADER
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, ENSEMBLE, SCORES_OUTPUT

T = TypeVar("T")

DEFAULT_URL = "127.0.0.1:8001"
PROBE_TIMEOUT_S = 0.5  # after a deadline passed while waiting: is any server reachable at all?
LB_POLICIES = ("round_robin", "affinity")
LbPolicy = Literal["round_robin", "affinity"]


# ---- flows: the client's logic, written once; a step is the only thing a transport runs -----------


@dataclass(frozen=True)
class Rpc:
    """Call ``method(*args, client_timeout=timeout_s, **kwargs)`` of the tritonclient (sync or asyncio):
    the balanced channel's, or with ``replica`` (``ip:port``) that replica's own."""

    method: str
    timeout_s: float
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    replica: str | None = None


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


def call_key(request: ScoreRequest, inputs: Mapping[str, I64]) -> str:
    """The routing key of one call of ``request``: its caller-given ``user_id``, else its encoder inputs."""
    return user_route_key(request.user_id) if request.user_id is not None else route_key(inputs)


def _rpc(
    method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], deadline: float, key: str | None,
    replica: str | None = None,
) -> Rpc:  # fmt: skip
    """One attempt's step: what is left of ``deadline`` as its gRPC deadline and, for an inference call
    (``key`` given), its share per queue as Triton's per-request ``timeout`` (microseconds) beside the
    routing key header: each of the ensemble's QUEUED_STEPS queues times the ``timeout`` afresh, so
    their waits together stay within what is left."""
    remaining = max(deadline - time.monotonic(), 1e-3)
    if key is not None:
        kwargs = {**kwargs, "timeout": queue_timeout_us(remaining), "headers": {ROUTE_KEY_HEADER: key}}
    return Rpc(method, remaining, args, kwargs, replica)


def _router(url: str, lb: LbPolicy | None, load_factor: float, refresh_s: float) -> Router | None:
    """The affinity router for ``url``, or None for one balanced channel: ``lb="round_robin"``, or by
    default (``lb=None``) when the url names one replica now (or one name that does not resolve yet,
    which gRPC's own resolver then waits for)."""
    if lb == "round_robin":
        return None
    try:
        replicas = resolve_replicas(url)
    except ValueError:
        if lb == "affinity":
            raise
        return None
    if lb is None and len(replicas) < 2:
        return None
    resolve = (lambda: resolve_replicas(url)) if names_hosts(url) else None
    return Router(replicas, load_factor=load_factor, resolve=resolve, refresh_s=refresh_s)


class ClientCore:
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
        lb: LbPolicy | None = None,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight} must be >= 1")
        if lb is not None and lb not in LB_POLICIES:
            raise ValueError(f"lb={lb!r} must be one of {LB_POLICIES} (or None: affinity over several replicas)")
        self.max_in_flight = max_in_flight
        self.url = url
        self.target, addresses = grpc_target(url)
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
        self.router = _router(url, lb, load_factor, refresh_s)
        self.lb: LbPolicy = "affinity" if self.router is not None else "round_robin"
        self._addresses = addresses
        # several addresses: the certificate must name the first host (gRPC checks one name per channel)
        first_host = url_parts(url)[0].removeprefix("dns:///").rpartition(":")[0].strip("[]")
        several = len(addresses) > 1 or self.router is not None
        tls_name = first_host if ssl and several else None
        self._triton_kwargs: dict[str, Any] = {
            "url": self.target,
            "ssl": ssl,
            **given,
            "channel_args": channel_args(self.retry, tls_name),
        }
        self._replica_kwargs: dict[str, Any] = {
            "ssl": ssl,
            **given,
            "channel_args": channel_args(self.retry, tls_name, replica=True),
        }
        self._spec = spec
        self._open()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The replicas calls go to: the router's current set (affinity), or the url's addresses."""
        return self.router.replicas if self.router is not None else self._addresses

    def _open(self) -> None:
        """Per-client setup once the options are parsed (the gRPC channel)."""
        raise NotImplementedError

    def _register_headers(self, triton: Any) -> Any:
        triton.register_plugin(HeaderPlugin(self.headers, self.tracer))
        return triton

    def _deadline(self, deadline_s: float | None) -> float:
        """The monotonic time by which a whole operation must be done (``timeout_s`` unless given)."""
        seconds = self.timeout_s if deadline_s is None else float(deadline_s)
        if not seconds > 0:
            raise ValueError(f"deadline_s={deadline_s} must be > 0")
        return time.monotonic() + seconds

    # -- one RPC: within the deadline; affinity's failover, the hand-written retry of a loading model
    def _call(
        self, what: str, method: str, *args: Any, deadline: float, key: str | None = None, waits: bool = True,
        **kwargs: Any,
    ) -> Flow[Any]:  # fmt: skip
        """One call by ``deadline``; ``key``: an inference call's routing key (routed by it, sent as
        :data:`ROUTE_KEY_HEADER` with Triton's per-request timeout); ``waits=False`` for health probes
        (one attempt, as it comes)."""
        if self.router is not None:
            return (yield from self._routed_call(what, method, args, kwargs, deadline, key, waits))
        attempt = 0
        while True:
            attempt += 1
            try:
                return (yield _rpc(method, args, kwargs, deadline, key))
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
                            f"its deadline (timeout_s={self.timeout_s:g} s unless the call gave deadline_s) ({reason})",
                            status=UNAVAILABLE,
                            server_message=reason,
                            attempts=attempt,
                        ) from e
                raise server_error(e, what, self.url, attempt) from e

    def _routed_call(
        self, what: str, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], deadline: float,
        key: str | None, waits: bool,
    ) -> Flow[Any]:  # fmt: skip
        """Affinity: the key's replica under the load bound; on a replica gone, a refusal or a model still
        loading, the key's next replica after a backoff, while the deadline allows (every replica once,
        at least ``retries + 1`` attempts; while replicas are gone and ``wait_for_ready``, until the deadline)."""
        router = self.router
        assert router is not None  # only called with a router
        tries = max(self.retry.retries + 1, len(router.replicas)) if waits else 1
        tried: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            replica = router.acquire(key if key is not None else method, tried)
            ok = gone = False
            try:
                result = yield _rpc(method, args, kwargs, deadline, key, replica)
                ok = True
                return result
            except InferenceServerException as e:
                kind = failure_kind(e)
                gone = kind == "down"
                delay = self.retry.delay(attempt)
                waiting = gone and waits and self.retry.wait_for_ready  # no replica up: wait for one, as gRPC would
                if kind is None or (attempt >= tries and not waiting) or time.monotonic() + delay >= deadline:
                    raise server_error(e, what, f"{replica} (replica of {self.url})", attempt) from e
            finally:
                router.release(replica, ok=ok, gone=gone)
            tried.append(replica)
            yield Sleep(delay)

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
    def _spec_flow(self, deadline: float | None = None) -> Flow[ServingSpec]:
        if self._spec is None:
            config = yield from self._call(
                f"get_model_config({self.model!r})",
                "get_model_config",
                self.model,
                as_json=True,
                deadline=self._deadline(None) if deadline is None else deadline,
            )
            self._spec = spec_from_model_config(config, self.model)
        return self._spec

    # -- inference
    def _infer_flow(
        self, inputs: Mapping[str, Any], deadline: float, key: str | None = None, validate: bool = False
    ) -> Flow[npt.NDArray[Any]]:
        """One ``infer`` of the ensemble, routed by ``key`` (by default :func:`route_key` of the inputs)."""
        if validate:
            spec = yield from self._spec_flow(deadline)
            inputs = validate_inputs(inputs, spec, self.allow)
        tensors = make_infer_inputs(inputs)
        outputs = [grpcclient.InferRequestedOutput(SCORES_OUTPUT)]
        key = route_key(inputs) if key is None else key
        what = f"infer({self.model!r})"
        result = yield from self._call(what, "infer", self.model, tensors, outputs=outputs, deadline=deadline, key=key)
        scores = result.as_numpy(SCORES_OUTPUT)
        if scores is None:
            raise ServerError(f"infer({self.model!r}) at {self.url}: the response has no {SCORES_OUTPUT!r} output")
        return np.asarray(scores)

    def _prepare(self, requests: Sequence[ScoreRequest], fields: Sequence[str]) -> list[ScoreRequest]:
        """Checked before any network call: the integer rule, shapes, padding items and timestamps."""
        return [validate_request(r, f, allow=self.allow) for r, f in zip(requests, fields, strict=True)]

    def _single(self, request: ScoreRequest, deadline_s: float | None) -> Flow[list[F32]]:
        deadline = self._deadline(deadline_s)
        return self._score_flow(self._prepare([request], [""]), [""], deadline)

    def _batch(self, requests: Sequence[ScoreRequest], deadline_s: float | None) -> Flow[list[F32]]:
        deadline = self._deadline(deadline_s)
        fields = [f"requests[{i}]" for i in range(len(requests))]
        return self._score_flow(self._prepare(requests, fields), fields, deadline)

    def _score_flow(self, requests: list[ScoreRequest], fields: Sequence[str], deadline: float) -> Flow[list[F32]]:
        if not requests:
            return []
        spec = yield from self._spec_flow(deadline)
        for r, f in zip(requests, fields, strict=True):
            check_served(r, f, spec, self.allow)  # the server's vocabularies
        counts = [len(r.candidates) for r in requests]
        calls = plan_calls(counts, spec.max_candidates)
        inputs = build_call_inputs(calls, requests, spec)  # from checked values, cut to the served limits
        keys = [call_key(requests[c.request], a) for c, a in zip(calls, inputs, strict=True)]
        # Two waves: every request's first chunk, then all other chunks. Triton stores an encoder
        # response in its cache only once it is computed, so chunks sent beside the first would all
        # miss (and compute the same keys/values again); sent after it, every one is a hit.
        first = [k for k, c in enumerate(calls) if c.start == 0]
        rest = [k for k, c in enumerate(calls) if c.start > 0]
        raw: dict[int, npt.NDArray[Any]] = {}
        for wave in (first, rest):
            if wave:
                answers = yield Concurrently([self._infer_flow(inputs[k], deadline, keys[k]) for k in wave])
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
                deadline = self._deadline(None)
                out[key] = bool((yield from self._call(key, method, *args, deadline=deadline, waits=False)))
            out["ready"] = bool(out["server_ready"] and out["model_ready"])
            if out["ready"]:
                spec = yield from self._spec_flow()
                out["served"] = json.loads(spec.to_json())
        except ServerError as e:
            out["error"] = str(e)
        return out


def advance(flow: Flow[T], value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Resume ``flow`` with a step's result or error: ``(True, next step)`` or ``(False, its return value)``."""
    try:
        return True, (flow.throw(error) if error is not None else flow.send(value))
    except StopIteration as stop:
        return False, stop.value
