"""Helpers of the tests that run the real server: one raw ``tritonclient`` inference (no project client in
between), a model's statistics, graphs written as a served model repository, and servers started side by side.

A sibling module of the tests (``tests/`` is not a package): ``from server_helpers import triton_infer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from contract.config import AstroConfig
from contract.tensors import ENSEMBLE, ITEM_SCORER, USER_ENCODER
from export.onnx_graphs import GraphPaths, export_graphs
from export.repository import Target, write_repository
from model.astro import AstroModel
from serve.triton_server import TritonServer

Arrays = Mapping[str, npt.NDArray[np.generic]]


def triton_infer(
    url: str, arrays: Arrays, model: str = ENSEMBLE, dtypes: Mapping[str, str] | None = None
) -> dict[str, npt.NDArray[np.generic]]:
    """One ``infer`` of ``model`` at ``url``: each array an input, sent as the Triton datatype of its numpy dtype
    unless ``dtypes`` names another; every output the server returns, by name."""
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = []
        for name, arr in arrays.items():
            tensor = grpcclient.InferInput(
                name, list(arr.shape), (dtypes or {}).get(name, np_to_triton_dtype(arr.dtype))
            )
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        result = client.infer(model, inputs)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


def model_statistics(url: str, model: str) -> dict[str, Any]:
    """Triton's inference statistics of ``model`` at ``url`` so far, as JSON (``execution_count``,
    ``inference_stats.success/fail/queue/...``)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats: dict[str, Any] = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return stats
    finally:
        client.close()


def write_served_repository(out: Path, cfg: AstroConfig, graphs: GraphPaths, target: Target = "python") -> Path:
    """``cfg``'s fp32 ``graphs`` written as ``target``'s model repository at ``out``, as ``python -m export`` writes
    it (without the checks and provenance around it); returns ``out``."""
    files = {USER_ENCODER: graphs.user_encoder, ITEM_SCORER: graphs.item_scorer}
    write_repository(out, cfg, target, files, "fp32", progress=lambda _: None)
    return out


def export_repository(model: AstroModel, root: Path) -> tuple[GraphPaths, Path]:
    """``model`` exported to fp32 ONNX under ``root / "onnx"`` and written as the python target's repository at
    ``root / "repo"``: the graphs (for an in-process ONNX Runtime reference) and the repository."""
    graphs = export_graphs(model, root / "onnx", "fp32", progress=lambda _: None)
    return graphs, write_served_repository(root / "repo", model.cfg, graphs)


def start_together(servers: Sequence[TritonServer], timeout_s: float = 180) -> None:
    """Start ``servers`` side by side (each loads its models while the others load theirs) until each serves the
    ensemble; the first failure is raised here, in the caller's thread, once every start has ended."""
    with ThreadPoolExecutor(len(servers)) as pool:
        started = [pool.submit(s.start, ready_models=[ENSEMBLE], timeout_s=timeout_s) for s in servers]
    for future in started:
        future.result()
