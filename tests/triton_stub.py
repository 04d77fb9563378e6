"""``StubTriton``: a few-line in-process servicer of Triton's own gRPC protocol
(``tritonclient.grpc.service_pb2_grpc``) serving an ``astro`` spec, for the client's tests where the wire
matters (gRPC's retries and waiting, headers, error mapping, chunked calls, balancing). Its scores are
:func:`client_samples.fake_scores` of each row's inputs, not the model: it checks the client's plumbing only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs installed; the tests only start a server
import numpy as np
import numpy.typing as npt
from client_samples import I64, SPEC, fake_scores
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from client import (
    Allow,
    RequestError,
    validate_inputs,
)
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT

LOADING_MSG = "Request for unknown model: 'astro' has no available versions"


class StubTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # untyped base
    # method names are gRPC's (CamelCase)
    """Answers Triton's gRPC protocol for an ``astro`` serving ``spec``; scores = :func:`fake_scores`.

    ``fail[method]`` is a list of (status, message) that the next calls of ``method`` abort with;
    ``calls`` records (method, metadata) of every ModelConfig/ModelInfer/ServerLive call; ``events``
    records ("in" | "out", candidate ids) as each ModelInfer arrives and as it is answered,
    ``delay_s`` after its arrival (after :meth:`hold_together`'s wait, if any)."""

    def __init__(self, spec: ServingSpec) -> None:
        self.spec = spec
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.batch_shapes: list[tuple[int, ...]] = []
        self.inputs: list[dict[str, npt.NDArray[np.int64]]] = []
        self.fail: dict[str, list[tuple[Any, str]]] = {}
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.deadlines: list[tuple[int | None, float | None]] = []  # per ModelInfer: Triton timeout us, gRPC s left
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.together: threading.Barrier | None = None
        self.held = 0  # how many of the next ModelInfer calls wait at ``together``

    def hold_together(self, n: int, timeout_s: float = 10.0) -> None:
        """The next ``n`` ModelInfer calls each wait until all ``n`` have arrived, so calls a client sends
        together are in flight together however slowly its threads start; after ``timeout_s`` they go on,
        so a client that sends fewer at once shows a lower peak instead of hanging (give its calls a longer
        timeout_s than this)."""
        with self.lock:
            self.together, self.held = threading.Barrier(n, timeout=timeout_s), n

    def _seen(self, method: str, context: Any) -> None:
        with self.lock:
            self.calls.append((method, {k: v for k, v in context.invocation_metadata()}))
            failures = self.fail.get(method)
            failure = failures.pop(0) if failures else None
        if failure is not None:
            context.abort(*failure)

    @property
    def metadata(self) -> list[dict[str, str]]:
        return [m for _, m in self.calls]

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    def ServerLive(self, request: Any, context: Any) -> Any:
        self._seen("ServerLive", context)
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=request.name == "astro")

    def ModelConfig(self, request: Any, context: Any) -> Any:
        self._seen("ModelConfig", context)
        if request.name != "astro":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        cfg = model_config_pb2.ModelConfig(name="astro", platform="ensemble", max_batch_size=self.spec.max_batch_size)
        for k, v in self.spec.to_parameters().items():
            cfg.parameters[k].string_value = v
        return service_pb2.ModelConfigResponse(config=cfg)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        self._seen("ModelInfer", context)
        timeout = request.parameters["timeout"].int64_param if "timeout" in request.parameters else None
        with self.lock:
            self.deadlines.append((timeout, context.time_remaining()))
        arrays = {
            t.name: np.frombuffer(raw, dtype=I64).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        try:  # the same limits Triton enforces from the ensemble config
            arrays = validate_inputs(arrays, self.spec, Allow(unknown_ids=True, any_timestamp=True))
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"[request id: <id_unknown>] {e}")
        key = tuple(arrays[CANDIDATE_INPUT].ravel().tolist())
        with self.lock:
            self.batch_shapes.append(tuple(arrays[CANDIDATE_INPUT].shape))
            self.inputs.append(arrays)
            self.events.append(("in", key))
            together = self.together if self.held > 0 else None
            self.held = max(0, self.held - 1)
        if together is not None:
            with contextlib.suppress(threading.BrokenBarrierError):  # timed out: fewer came; the peak shows it
                together.wait()
        time.sleep(self.delay_s)
        scores = fake_scores(arrays, self.spec.n_tasks)
        with self.lock:
            self.events.append(("out", key))
        resp = service_pb2.ModelInferResponse(model_name="astro")
        out = resp.outputs.add()
        out.name, out.datatype = "scores", "FP32"
        out.shape.extend(scores.shape)
        resp.raw_output_contents.append(scores.tobytes())
        return resp


SMALL = ServingSpec(
    max_batch_size=3,
    max_candidates=8,
    max_block_len=12,
    task_names=("play", "like"),
    blocks=SPEC.blocks,
    behaviors=SPEC.behaviors,
    scenarios=SPEC.scenarios,
    preset="stub",
)


def start_stub(spec: ServingSpec, port: int = 0) -> tuple[grpc.Server, StubTriton, int]:
    stub = StubTriton(spec)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(stub, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, stub, bound


def serve_stub(spec: ServingSpec = SMALL) -> Iterator[tuple[StubTriton, str]]:
    """A fixture's body: a stub of ``spec`` on a free port, as ``(stub, url)``, stopped afterwards."""
    server, stub, port = start_stub(spec)
    yield stub, f"127.0.0.1:{port}"
    server.stop(grace=None)


def refused_port() -> Iterator[int]:
    """A fixture's body: a port bound but not listening, so every connection is refused, with no race."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield int(s.getsockname()[1])
    s.close()
