"""The ensemble's tensors on the wire, and what the server says about itself: contract arrays made
``tritonclient`` inputs, the served spec read from the ensemble's config, a ``scores`` output checked
against that spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.errors import ServerError
from client.validation import CONTRACT_INPUTS, RequestError
from contract.serving_spec import ServingSpec
from contract.tensors import ENSEMBLE, SCORES_OUTPUT

F32 = npt.NDArray[np.float32]


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
