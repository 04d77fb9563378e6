"""Triton Python-backend model that runs its ``model.onnx`` with ONNX Runtime.

Copied by the repository generator into ``<model>/<version>/model.py`` for the ``python``
target (the ``nvidia-pytriton`` server has no ONNX Runtime backend). Everything is set up
once in ``initialize``: the session, the I/O names and dtypes, the input limits. ``execute``
checks each request against the limits the config publishes and answers a bad request with
an error naming the tensor, its size and the limit, so one bad request never fails others
in the same batch, and the model keeps serving.
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
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = {n for n, _, _ in self.inputs} - onnx_inputs
        if missing:
            raise pb_utils.TritonModelException(f"{self.name}: {path} lacks inputs {sorted(missing)}")

    def _feeds(self, request: Any) -> dict[str, np.ndarray[Any, Any]]:
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
        return feeds

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        """One request's response; a failure becomes that request's error, never the batch's."""
        try:
            results = self.session.run(self.outputs, self._feeds(request))
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, results, strict=True)]
        except RequestRejected as e:
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
            )
        except ORT_ERRORS as e:  # ONNX Runtime's own errors, with its message
            error = f"{self.name}: ONNX Runtime failed: {e}"
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error))
        except pb_utils.TritonModelException as e:  # e.g. building an output tensor
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {e}"))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        del self.session
