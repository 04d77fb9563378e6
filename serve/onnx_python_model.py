"""Triton Python-backend model that runs its ``model.onnx`` with ONNX Runtime.

Copied by the repository generator into ``<model>/<version>/model.py`` for the ``python``
target (the ``nvidia-pytriton`` server has no ONNX Runtime backend). Everything is set up
once in ``initialize``: the session, the I/O names and dtypes, the input limits. ``execute``
checks each request against the limits the config publishes (sizes, axes that must agree,
S = Nb*Tb user tokens against Tb) and that its floating-point inputs are finite, and answers a
bad request with an error naming the tensor, its size or value and the limit, so one bad
request never fails others in the same batch, and the model keeps serving.

A dynamic batch runs as few ONNX Runtime calls as its shapes allow: the valid requests are
grouped by their inputs' shapes past the batch axis (equal Tb for the encoder, equal N and Tb
for the scorer), each group's inputs are concatenated along the batch axis, run once, and the
outputs split back per request. A group whose run fails is re-run request by request, so an
ONNX Runtime error stays the error of the request that caused it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

# ONNX Runtime's errors are pybind exceptions, not RuntimeError subclasses
ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException, ort_state.EPFail)

# Triton config dtype -> the numpy dtype ONNX Runtime is fed
_NUMPY = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_BOOL": np.bool_}


Feed = np.ndarray[Any, Any]


def _error_response(message: str, code: Any = None) -> Any:
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class RequestRejected(ValueError):
    """A request the model cannot accept; the message is returned to the client."""


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{self.name}: model file {path} is missing")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: both composing models, the server and its
        # clients share the CPU, and spinning pools starve them (2 threads: served p50 2.5x slower on
        # 2 cores; docs/bench/report.md, "Findings and fixes"). No effect at 1 thread (no pool).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except (*ORT_ERRORS, ort_state.InvalidGraph, ort_state.InvalidProtobuf, ort_state.NoSuchFile) as e:
            raise pb_utils.TritonModelException(f"{self.name}: cannot load {path}: {e}") from e
        self.inputs = [(t["name"], _NUMPY[t["data_type"]], len(t["dims"]) + 1) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        # {input: [[axis, symbol, what, max], ...]}: the dynamic axes' limits from the model config;
        # inputs whose axes carry the same symbol must agree on its size (e.g. the history's Tb)
        self.limits: dict[str, list[list[Any]]] = json.loads(params.get("input_limits", "{}"))
        # {axis symbol: [factor, other symbol, what]}: the first axis's size must be factor times the other's
        # (the scorer's keys/values carry S = Nb*Tb user tokens, its hist_timestamps Tb per block)
        self.derived: dict[str, list[Any]] = json.loads(params.get("derived_axes", "{}"))
        # floating-point inputs (keys and values) must be finite: a NaN there would come back as NaN scores
        self.finite = [name for name, dtype, _ in self.inputs if np.issubdtype(dtype, np.floating)]
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = {n for n, _, _ in self.inputs} - onnx_inputs
        if missing:
            raise pb_utils.TritonModelException(f"{self.name}: {path} lacks inputs {sorted(missing)}")

    def _feeds(self, request: Any) -> dict[str, Feed]:
        feeds = {}
        batch = None
        seen: dict[str, tuple[str, int]] = {}  # axis symbol -> (first input with it, its size)
        for name, dtype, rank in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestRejected(f"{self.name}: input {name!r} is missing")
            arr = tensor.as_numpy()
            if arr.dtype != dtype or arr.ndim != rank:
                raise RequestRejected(
                    f"{self.name}: input {name!r} is {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)} "
                    f"of rank {rank}"
                )
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise RequestRejected(f"{self.name}: input {name!r} has batch {arr.shape[0]}, other inputs {batch}")
            for axis, symbol, what, limit in self.limits.get(name, []):
                size = arr.shape[axis]
                if size > limit or size < 1:
                    raise RequestRejected(
                        f"{self.name}: input {name!r} has {what} = {size} on axis {axis}; "
                        f"allowed 1..{limit} (the limit this repository was exported with)"
                    )
                first, first_size = seen.setdefault(symbol, (name, size))
                if size != first_size:  # e.g. the four history inputs share Tb
                    raise RequestRejected(
                        f"{self.name}: input {name!r} has {what} = {size} but {first!r} has {first_size}; "
                        "they must agree"
                    )
            feeds[name] = arr
        for symbol, (factor, other, what) in self.derived.items():
            if symbol in seen and other in seen and seen[symbol][1] != factor * seen[other][1]:
                (name, size), (other_name, other_size) = seen[symbol], seen[other]
                raise RequestRejected(
                    f"{self.name}: input {name!r} has {size} on its {symbol} axis but {other_name!r} has "
                    f"{other_size} on its {other} axis; {what} must be {factor * other_size}"
                )
        for name in self.finite:
            arr = feeds[name]
            if not np.isfinite(arr).all():
                where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
                raise RequestRejected(
                    f"{self.name}: input {name!r} holds a non-finite value {arr[where]} at index {list(where)}; "
                    "it must be finite"
                )
        return feeds

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order: same-shape requests share one ONNX Runtime run."""
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, dict[str, Feed]]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except RequestRejected as e:
                responses[i] = _error_response(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            shapes = tuple(feeds[name].shape[1:] for name, _, _ in self.inputs)
            groups.setdefault(shapes, []).append((i, feeds))
        for members in groups.values():
            for i, response in self._run_group(members):
                responses[i] = response
        return responses

    def _run_group(self, members: list[tuple[int, dict[str, Feed]]]) -> list[tuple[int, Any]]:
        """(request index, response) of requests whose inputs agree in shape past the batch axis."""
        if len(members) == 1:
            i, feeds = members[0]
            return [(i, self._answer(feeds))]
        names = [name for name, _, _ in self.inputs]
        batch = {name: np.concatenate([feeds[name] for _, feeds in members]) for name in names}
        try:
            results = self.session.run(self.outputs, batch)
        except ORT_ERRORS:  # find the request that caused it: each alone gets its own answer
            return [(i, self._answer(feeds)) for i, feeds in members]
        answered = []
        start = 0
        for i, feeds in members:
            stop = start + int(feeds[names[0]].shape[0])
            answered.append((i, self._response([r[start:stop] for r in results])))
            start = stop
        return answered

    def _answer(self, feeds: dict[str, Feed]) -> Any:
        """One request run alone; an ONNX Runtime failure becomes that request's error."""
        try:
            results = self.session.run(self.outputs, feeds)
        except ORT_ERRORS as e:  # ONNX Runtime's own errors, with its message
            return _error_response(f"{self.name}: ONNX Runtime failed: {e}")
        return self._response(results)

    def _response(self, results: list[Feed]) -> Any:
        try:
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, results, strict=True)]
        except pb_utils.TritonModelException as e:  # e.g. building an output tensor
            return _error_response(f"{self.name}: {e}")
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        del self.session
