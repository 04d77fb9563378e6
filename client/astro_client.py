"""gRPC clients of the ``astro`` Triton ensemble: :class:`AstroClient` (blocking, over ``tritonclient.grpc``)
and :class:`AsyncAstroClient` (asyncio, over ``tritonclient.grpc.aio``).

Each runs the flows of :mod:`client.flows` (request checks, call planning, routing, retries, error mapping,
result assembly: written once) and does the one thing a flow cannot: the I/O of its steps, blocking (calls
of one batch in threads) or awaited (calls of one batch as tasks). Imports numpy, tritonclient and the
torch-free ``contract`` package only (``pip install .[client]``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio

from client.flows import ClientCore, Flow, Rpc, Sleep, Step, T, advance
from client.validation import I64, ScoreRequest
from client.wire import F32
from contract.blocks import EventHistory
from contract.serving_spec import ServingSpec


class AstroClient(ClientCore):
    """Blocking client of the ``astro`` ensemble. Thread-safe; use as a context manager or call :meth:`close`.

    ``url``: ``host:port``, any gRPC target, several ``host:port`` comma-separated, or a DNS name
    that resolves to several replicas (a headless Service). ``lb``: ``"affinity"`` (the default
    when the url names several replicas: each call to the replica its routing key picks, under
    the load bound ``load_factor``, the set re-resolved every ``refresh_s``) or
    ``"round_robin"`` (:mod:`client.routing`). ``timeout_s`` is the default deadline of one
    operation (a :meth:`score` with all its chunks, waits, retries and failovers; ``deadline_s=``
    on a call overrides it); every call carries what is left of it to the server.
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
        self._triton: Any = None
        if self.router is None:
            self._triton = self._register_headers(grpcclient.InferenceServerClient(**self._triton_kwargs))
        self._replicas: dict[str, Any] = {}
        self._replicas_lock = threading.Lock()

    def _replica(self, address: str) -> Any:
        """The channel of one replica (affinity), opened on first use; channels of replicas gone from
        the set close once no call is left on them."""
        with self._replicas_lock:
            for gone in self.router.retired() if self.router is not None else ():
                old = self._replicas.pop(gone, None)
                if old is not None:
                    old.close()
            if address not in self._replicas:
                triton = grpcclient.InferenceServerClient(address, **self._replica_kwargs)
                self._replicas[address] = self._register_headers(triton)
            return self._replicas[address]

    def _run(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            running, step = advance(flow, value, error)
            if not running:
                result: T = step
                return result
            value, error = None, None
            try:
                value = self._execute(step)
            except Exception as e:  # handed to the flow, which decides (retry, map, or let it propagate)
                error = e
            except BaseException:  # cancelled: the flow's own cleanup (a call counted in flight) runs now
                flow.close()
                raise

    def _execute(self, step: Step) -> Any:
        if isinstance(step, Rpc):
            triton = self._triton if step.replica is None else self._replica(step.replica)
            return getattr(triton, step.method)(*step.args, client_timeout=step.timeout_s, **step.kwargs)
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

    def infer_arrays(
        self, inputs: Mapping[str, Any], *, validate: bool = False, deadline_s: float | None = None
    ) -> npt.NDArray[Any]:
        """Send raw contract tensors as they are and return the ``scores`` output.

        Nothing is checked or cast unless ``validate=True`` (then :func:`validate_inputs`
        against the served spec), so QA can probe how the server handles bad input.
        Server errors raise :class:`ServerError` with the server's message.
        """
        return self._run(self._infer_flow(inputs, self._deadline(deadline_s), validate=validate))

    def score(
        self,
        history: EventHistory,
        candidates: Sequence[int] | I64,
        scenario: int,
        timestamp: int,
        *,
        user_id: str | None = None,
        deadline_s: float | None = None,
    ) -> F32:
        """Scores ``[N, n_tasks]`` float32 of one user's ``N`` candidates, in candidate order.

        ``user_id``: route by it instead of the history (a caller's stable id); ``deadline_s``: the
        deadline of the whole score (default ``timeout_s``)."""
        request = ScoreRequest(history, candidates, scenario, timestamp, user_id)
        return self._run(self._single(request, deadline_s))[0]

    def score_batch(self, requests: Sequence[ScoreRequest], *, deadline_s: float | None = None) -> list[F32]:
        """``[N_i, n_tasks]`` scores per request, in order: one ``B=1`` call per user and chunk (:func:`plan_calls`)."""
        return self._run(self._batch(requests, deadline_s))

    def health(self) -> dict[str, Any]:
        """``{url, model, server_live, server_ready, model_ready, ready, error, served}``; never raises."""
        return self._run(self._health_flow())

    def is_ready(self) -> bool:
        """Server ready and the ensemble ready."""
        return bool(self.health()["ready"])

    def close(self) -> None:
        if self._triton is not None:
            self._triton.close()
        with self._replicas_lock:
            for triton in self._replicas.values():
                triton.close()
            self._replicas.clear()

    def __enter__(self) -> AstroClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncAstroClient(ClientCore):
    """asyncio client of the ``astro`` ensemble; same options as :class:`AstroClient`.

    The gRPC channel opens on first use, inside the running event loop. The calls of one
    :meth:`score_batch` run concurrently, at most ``max_in_flight`` at a time. Use
    ``async with`` or ``await close()``.
    """

    def _open(self) -> None:
        self._triton_client: Any = None
        self._replicas: dict[str, Any] = {}

    def _client(self, replica: str | None = None) -> Any:
        """The balanced channel, or one replica's (affinity); opened on first use, in the running loop
        (channels of replicas gone from the set close in :meth:`_execute`)."""
        if replica is not None:
            if replica not in self._replicas:
                triton = grpcclient_aio.InferenceServerClient(replica, **self._replica_kwargs)
                self._replicas[replica] = self._register_headers(triton)
            return self._replicas[replica]
        if self._triton_client is None:
            self._triton_client = self._register_headers(grpcclient_aio.InferenceServerClient(**self._triton_kwargs))
        return self._triton_client

    async def _run(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            running, step = advance(flow, value, error)
            if not running:
                result: T = step
                return result
            value, error = None, None
            try:
                value = await self._execute(step)
            except Exception as e:  # handed to the flow, which decides (retry, map, or let it propagate)
                error = e
            except BaseException:  # cancelled: the flow's own cleanup (a call counted in flight) runs now
                flow.close()
                raise

    async def _execute(self, step: Step) -> Any:
        if isinstance(step, Rpc):
            for gone in self.router.retired() if self.router is not None else ():
                retired = self._replicas.pop(gone, None)
                if retired is not None:
                    await retired.close()
            method = getattr(self._client(step.replica), step.method)
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

    async def infer_arrays(
        self, inputs: Mapping[str, Any], *, validate: bool = False, deadline_s: float | None = None
    ) -> npt.NDArray[Any]:
        """As :meth:`AstroClient.infer_arrays`."""
        return await self._run(self._infer_flow(inputs, self._deadline(deadline_s), validate=validate))

    async def score(
        self,
        history: EventHistory,
        candidates: Sequence[int] | I64,
        scenario: int,
        timestamp: int,
        *,
        user_id: str | None = None,
        deadline_s: float | None = None,
    ) -> F32:
        """As :meth:`AstroClient.score`."""
        request = ScoreRequest(history, candidates, scenario, timestamp, user_id)
        return (await self._run(self._single(request, deadline_s)))[0]

    async def score_batch(self, requests: Sequence[ScoreRequest], *, deadline_s: float | None = None) -> list[F32]:
        """As :meth:`AstroClient.score_batch`; the calls run concurrently."""
        return await self._run(self._batch(requests, deadline_s))

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
        for triton in self._replicas.values():
            await triton.close()
        self._replicas.clear()

    async def __aenter__(self) -> AsyncAstroClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
