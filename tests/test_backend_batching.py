"""The Python backend (``serve/onnx_python_model.py``) runs a dynamic batch in one ONNX Runtime call, and a
request that fails stays the only one that fails; against the real ``tritonserver``.

Two servers: a tiny ``gather`` model served by the very backend file (an ONNX ``Gather`` whose
out-of-range index makes ONNX Runtime fail for one request among same-shape ones, which Triton's
dynamic batcher puts in one batch), and the ASTRO ensemble of the shared ``triton`` fixture under
concurrent load.
"""

from __future__ import annotations

import json
import queue
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER
from export.repository import PYTHON_MODEL_SOURCE
from model.random_inputs import random_request
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server

TABLE = np.arange(10, dtype=np.float32) * 1.5  # y = TABLE[x], z = 2 y
WIDTH = 4
GATHER_CONFIG = """\
name: "gather"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_INT64 dims: [ WIDTH ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ WIDTH ] }, { name: "z" data_type: TYPE_FP32 dims: [ WIDTH ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 1000000 }
parameters { key: "onnx_file" value: { string_value: "model.onnx" } }
parameters { key: "intra_op_threads" value: { string_value: "1" } }
""".replace("WIDTH", str(WIDTH))


def gather_onnx(path: Path) -> None:
    table = helper.make_tensor("table", TensorProto.FLOAT, [TABLE.size], TABLE.tolist())
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "x"], ["y"]), helper.make_node("Mul", ["y", "two"], ["z"])],
        "gather",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", WIDTH])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", WIDTH]),
        ],
        initializer=[table, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def gather_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("batching") / "repository"
    (repo / "gather" / "1").mkdir(parents=True)
    (repo / "gather" / "config.pbtxt").write_text(textwrap.dedent(GATHER_CONFIG))
    shutil.copyfile(PYTHON_MODEL_SOURCE, repo / "gather" / "1" / "model.py")
    gather_onnx(repo / "gather" / "1" / "model.onnx")
    with TritonServer(repo) as server:
        server.start(ready_models=["gather"], timeout_s=120)
        yield server


def counts(client: Any, model: str) -> tuple[int, int]:
    """(inference count, execution count) of ``model`` so far."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def counts_reaching(client: Any, model: str, target: tuple[int, int], timeout_s: float = 10.0) -> tuple[int, int]:
    """``counts`` once both reach ``target`` (inferences, executions), or the last read at the deadline.

    The Python backend records an execution's statistics only after it has sent the responses, so a read
    right after the last response can miss that execution. The counters only grow: poll until they show
    what was sent, and let the caller assert on what comes back, so a wrong count still fails (after the
    deadline if it never gets there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = counts(client, model)
        if (now[0] >= target[0] and now[1] >= target[1]) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def send_together(
    client: Any, model: str, requests: list[dict[str, np.ndarray[Any, Any]]], outputs: list[str]
) -> list[Any]:
    """All ``requests`` in flight at once; each result is ``{output: array}`` or the exception."""
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for i, arrays in enumerate(requests):
        inputs = []
        for name, arr in arrays.items():
            inp = grpcclient.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        client.async_infer(
            model,
            inputs,
            callback=lambda result, error, i=i: done.put((i, result, error)),
            outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
            client_timeout=120,
        )
    results: list[Any] = [None] * len(requests)
    for _ in requests:
        i, result, error = done.get(timeout=180)
        results[i] = error if error is not None else {o: result.as_numpy(o) for o in outputs}
    return results


def test_one_batch_one_run_outputs_split_per_request(gather_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(gather_server.grpc_url)
    rng = np.random.default_rng(0)
    requests = [{"x": rng.integers(0, 10, size=(b, WIDTH)).astype(np.int64)} for b in (1, 2, 1, 3)]
    before = counts(client, "gather")
    results = send_together(client, "gather", requests, ["y", "z"])
    after = counts_reaching(client, "gather", (before[0] + 7, before[1] + 1))
    for req, res in zip(requests, results, strict=True):
        assert isinstance(res, dict), res
        np.testing.assert_array_equal(res["y"], TABLE[req["x"]])
        np.testing.assert_array_equal(res["z"], 2 * TABLE[req["x"]])
    ran = (after[0] - before[0], after[1] - before[1])
    assert ran[0] == 7, f"(rows, executions) {ran}: 7 rows sent"
    assert ran[1] == 1, f"(rows, executions) {ran}: the four requests were one dynamic batch, one execute"
    client.close()


def test_a_failing_request_fails_alone_in_its_batch(gather_server: TritonServer) -> None:
    """Same shapes, so Triton batches them; index 99 makes ONNX Runtime's Gather fail on the batched call,
    and the backend answers each request on its own: only that one fails, with ONNX Runtime's message."""
    client = grpcclient.InferenceServerClient(gather_server.grpc_url)
    good = [np.array([[1, 2, 3, 4]]), np.array([[9, 8, 7, 6]]), np.array([[0, 0, 5, 5]])]
    bad = np.array([[1, 99, 2, 3]])
    requests = [{"x": a.astype(np.int64)} for a in (good[0], good[1], bad, good[2])]
    before = counts(client, "gather")
    results = send_together(client, "gather", requests, ["y", "z"])
    after = counts_reaching(client, "gather", (before[0] + 4, before[1] + 1))  # the failing row counts too
    ran = (after[0] - before[0], after[1] - before[1])
    assert ran == (4, 1), f"(rows, executions) {ran}: the four requests were one dynamic batch"
    error = results[2]
    assert not isinstance(error, dict), "the out-of-range request must fail"
    assert "gather: ONNX Runtime failed" in str(error.message()) and "99" in str(error.message())
    for req, res in zip([requests[i] for i in (0, 1, 3)], [results[i] for i in (0, 1, 3)], strict=True):
        assert isinstance(res, dict), res
        np.testing.assert_array_equal(res["y"], TABLE[req["x"]])
    # and the model keeps serving
    (alone,) = send_together(client, "gather", [{"x": good[0].astype(np.int64)}], ["y"])
    np.testing.assert_array_equal(alone["y"], TABLE[good[0]])
    client.close()


def test_astro_under_concurrency_batches_and_keeps_errors_apart(triton: TritonServer) -> None:
    """The served ensemble: 12 users at once with one bad request among them. The good ones score as they do
    alone (batched ONNX Runtime runs agree with single ones to float rounding), the bad one gets its own
    INVALID_ARG naming Tb, and both composing models ran more than one request per execution."""
    cfg = AstroConfig.from_name("small")
    rng = np.random.default_rng(7)
    good = [random_request(cfg, rng, 1, cfg.max_block_len, 64) for _ in range(12)]
    bad = random_request(cfg, rng, 1, cfg.max_block_len + 1, 64)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    models = (USER_ENCODER, ITEM_SCORER)
    start = {m: counts(client, m) for m in models}
    alone = [send_together(client, ENSEMBLE, [r.as_dict()], [SCORES_OUTPUT])[0][SCORES_OUTPUT] for r in good]
    # one request at a time: one row and one execution each, in both models
    before = {m: counts_reaching(client, m, (start[m][0] + 12, start[m][1] + 12)) for m in models}
    requests: list[RequestBatch] = [*good[:6], bad, *good[6:]]
    results = send_together(client, ENSEMBLE, [r.as_dict() for r in requests], [SCORES_OUTPUT])
    # the encoder also counts the bad request (rejected in its batch), the scorer only the 12 good ones
    reached = {USER_ENCODER: 13, ITEM_SCORER: 12}
    after = {m: counts_reaching(client, m, (before[m][0] + reached[m], before[m][1] + 1)) for m in models}
    error = results.pop(6)
    assert not isinstance(error, dict)
    assert "block length Tb" in str(error.message()) and str(cfg.max_block_len + 1) in str(error.message())
    for single, res in zip(alone, results, strict=True):
        assert isinstance(res, dict), res
        np.testing.assert_allclose(res[SCORES_OUTPUT], single, rtol=0, atol=1e-5)
    ran = {m: (after[m][0] - before[m][0], after[m][1] - before[m][1]) for m in after}
    assert ran[ITEM_SCORER][0] == 12, ran  # the bad request never reached the scorer
    assert any(inferences > executions for inferences, executions in ran.values()), (
        f"no batching under 13 concurrent requests: {json.dumps(ran)}"
    )
    client.close()
