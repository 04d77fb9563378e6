"""Overload against the real server (Triton 2.51): queued work is bounded, refusals are immediate and retryable,
what is admitted is answered exactly, and a request whose deadline passes in a queue is never computed.

Every call carries its own ``client_timeout``, so a request the server never answers (the ensemble hang of
Triton before 2.67, core PR 466) fails its test instead of hanging it. Statistics come from Triton's own
statistics API; latencies belong to ``python -m bench.overload``, never to a test."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from add_one_model import ADD_ONE_CONFIG, write_model

from contract.admission import QUEUE_TIMEOUT_US, queue_bound
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE, GRAPHS, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER
from export.onnx_graphs import GraphPaths
from export.parity import OrtPipeline
from export.repository import TARGETS, composing_config, instances, queue_policy
from model.random_inputs import random_request
from serve.__main__ import admission_line
from serve.triton_server import TritonServer, iter_models

CFG = AstroConfig.from_name("small")
CALL_TIMEOUT_S = 60.0  # every call's own gRPC deadline: an unanswered request fails the test, never hangs it
QUEUE_FULL = "Exceeds maximum queue size"
TIMED_OUT = "Request timeout expired"


def test_every_target_bounds_each_composing_model() -> None:
    """The queue policy of contract/admission.py is in every composing model's config, on every target."""
    for target in TARGETS:
        for graph in GRAPHS:
            policy = composing_config(CFG, graph, target, "fp32", 1).dynamic_batching.default_queue_policy
            bound = queue_bound(graph, instances(graph, target))
            assert policy == queue_policy(bound), (target, graph)
            assert policy.max_queue_size >= bound.instances and policy.allow_timeout_override, (target, graph)
            assert policy.default_timeout_microseconds == QUEUE_TIMEOUT_US > 0, (target, graph)


def test_serve_prints_the_bounds_it_serves(exported_repo: Path) -> None:
    """`python -m serve` prints each composing model's bound, read from the configs it serves."""
    line = admission_line(exported_repo, iter_models(exported_repo))
    for graph in GRAPHS:
        size = queue_bound(graph, instances(graph, "python")).max_queue_size
        assert f"{graph} <= {size} queued, each <= {QUEUE_TIMEOUT_US / 1e6:g} s or the caller's shorter" in line, line
    assert "UNAVAILABLE at once, retryable" in line, line


def send_all(url: str, requests: list[tuple[RequestBatch, int | None]]) -> list[Any]:
    """Every (request, per-request timeout in µs or None) in flight at once, fired from one thread; each result
    is the scores array or the InferenceServerException."""
    client = grpcclient.InferenceServerClient(url)
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    try:
        for i, (req, timeout_us) in enumerate(requests):
            inputs = []
            for name, arr in req.as_dict().items():
                inp = grpcclient.InferInput(name, list(arr.shape), "INT64")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            client.async_infer(
                ENSEMBLE,
                inputs,
                callback=lambda result, error, i=i: done.put((i, result, error)),
                client_timeout=CALL_TIMEOUT_S,
                **({} if timeout_us is None else {"timeout": timeout_us}),
            )
        results: list[Any] = [None] * len(requests)
        for _ in requests:
            i, result, error = done.get(timeout=CALL_TIMEOUT_S + 10)
            results[i] = error if error is not None else result.as_numpy(SCORES_OUTPUT)
        return results
    finally:
        client.close()


def inference_counts(url: str) -> dict[str, int]:
    """Inferences (batch rows) each composing model has executed so far."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    return {s["name"]: int(s.get("inference_count", 0)) for s in stats if s["name"] in GRAPHS}


def counts_reaching(url: str, target: dict[str, int], timeout_s: float = 10.0) -> dict[str, int]:
    """``inference_counts`` once every model reaches ``target``, then read again: the Python backend records an
    execution after sending its responses, and an extra execution must still show."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(v < target[k] for k, v in inference_counts(url).items()):
        time.sleep(0.02)
    time.sleep(0.3)
    return inference_counts(url)


@pytest.fixture(scope="module")
def reference(exported_repo: Path) -> OrtPipeline:
    """The served ONNX files in ONNX Runtime in this process: what every admitted answer must equal."""
    paths = GraphPaths(*(exported_repo / graph / "1" / "model.onnx" for graph in GRAPHS))
    return OrtPipeline(paths, threads=1)


@pytest.mark.server
def test_burst_past_the_bound_is_refused_at_once_and_admitted_requests_are_exact(
    triton: TritonServer, reference: OrtPipeline, seed: int
) -> None:
    """48 requests at once against queues of 17 (encoder) and 10 (scorer): the ones past the bound come back
    UNAVAILABLE (retryable) saying the queue is full, every other one equals ONNX Runtime in process, and the
    server answers exactly afterwards. Without the bound all 48 are admitted and queue: the test fails.
    (On a crowded machine a queued request may also outwait the queue's timeout: UNAVAILABLE as well.)"""
    rng = np.random.default_rng(seed)
    burst = [random_request(CFG, rng, 4, CFG.max_block_len, 16) for _ in range(48)]
    results = send_all(triton.grpc_url, [(req, None) for req in burst])
    refused = [r for r in results if isinstance(r, grpcclient.InferenceServerException)]
    print(f"{len(refused)} of {len(burst)} refused")
    assert any(QUEUE_FULL in error.message() for error in refused), f"48 requests, none refused: no bound {refused}"
    for error in refused:
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert QUEUE_FULL in error.message() or TIMED_OUT in error.message(), error
    admitted = [(req, r) for req, r in zip(burst, results, strict=True) if isinstance(r, np.ndarray)]
    assert admitted, "nothing admitted"
    for req, scores in admitted:
        np.testing.assert_allclose(scores, reference(req), atol=1e-5, rtol=0)
    after = random_request(CFG, rng, 2, 8, 5)
    (scores,) = send_all(triton.grpc_url, [(after, None)])
    np.testing.assert_allclose(scores, reference(after), atol=1e-5, rtol=0)


@pytest.mark.server
def test_request_whose_deadline_passes_in_the_queue_is_never_computed(triton: TritonServer, seed: int) -> None:
    """Eight full batches of the longest history keep the encoder busy (one instance, one batch at a time); a
    one-user request with a 10 ms timeout queued behind them is refused (UNAVAILABLE, the timeout expired)
    and neither composing model ever runs it: their inference counts grow by the eight batches' rows alone
    (Triton's statistics). Without ``allow_timeout_override`` the short request would be computed."""
    rng = np.random.default_rng(seed)
    long = [random_request(CFG, rng, CFG.max_batch_size, CFG.max_block_len, 32) for _ in range(8)]
    short = random_request(CFG, rng, 1, 4, 3)
    before = inference_counts(triton.grpc_url)
    results = send_all(triton.grpc_url, [(req, None) for req in long] + [(short, 10_000)])
    *long_results, short_result = results
    assert all(isinstance(r, np.ndarray) for r in long_results), long_results
    assert isinstance(short_result, grpcclient.InferenceServerException), "the expired request was answered"
    assert short_result.status() == "StatusCode.UNAVAILABLE" and TIMED_OUT in short_result.message(), short_result
    rows = len(long) * CFG.max_batch_size
    after = counts_reaching(triton.grpc_url, {k: v + rows for k, v in before.items()})
    ran = {k: after[k] - before[k] for k in before}
    assert ran == {USER_ENCODER: rows, ITEM_SCORER: rows}, f"rows run {ran}: {rows} sent with time to run"


# ---- what Triton 2.51 itself does when a step of an ensemble refuses: two-step ensembles of tiny models ----
STEP_MODEL = """
import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sleep_s = float(json.loads(args["model_config"])["parameters"]["sleep_s"]["string_value"])

    def execute(self, requests):
        time.sleep(self.sleep_s)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", x + 1)]))
        return responses
"""
STEPS = {  # model -> (seconds per execution, queue policy)
    "fast": (0.0, ""),
    "slow_bounded": (0.3, "max_queue_size: 1"),
    "slow_override": (
        0.3,
        "timeout_action: REJECT default_timeout_microseconds: 10000000 allow_timeout_override: true",
    ),
    "slow_override_no_default": (
        0.3,
        "timeout_action: REJECT default_timeout_microseconds: 0 allow_timeout_override: true",
    ),
}
ENSEMBLES = {"bounded_first": ("slow_bounded", "fast"), "bounded_second": ("fast", "slow_bounded")}
ENSEMBLES |= {f"{m}_first": (m, "fast") for m in ("slow_override", "slow_override_no_default")}


def two_step_ensemble(name: str, first: str, second: str) -> str:
    steps = [(first, "INPUT0", "mid"), (second, "mid", "OUTPUT0")]
    return ADD_ONE_CONFIG.replace('backend: "python"', 'platform: "ensemble"').replace(
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
        "ensemble_scheduling { step ["
        + ",".join(
            f'{{ model_name: "{m}" model_version: -1 input_map {{ key: "INPUT0" value: "{i}" }} '
            f'output_map {{ key: "OUTPUT0" value: "{o}" }} }}'
            for m, i, o in steps
        )
        + "] }",
    )


@pytest.fixture(scope="module")
def steps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("steps") / "repository"
    for name, (sleep_s, policy) in STEPS.items():
        config = ADD_ONE_CONFIG + f'parameters {{ key: "sleep_s" value {{ string_value: "{sleep_s}" }} }}\n'
        config += f"dynamic_batching {{ default_queue_policy {{ {policy} }} }}\n" if policy else ""
        write_model(repo, name, STEP_MODEL, config)
    for name, (first, second) in ENSEMBLES.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(two_step_ensemble(name, first, second))
    with TritonServer(repo) as server:
        server.start(ready_models=list(ENSEMBLES), timeout_s=120)
        yield server


def send_batches(url: str, model: str, n: int, timeout_us: int | None = None) -> list[Any]:
    """``n`` full batches (8 rows: one per execution) at once, each with its own gRPC deadline."""
    client = grpcclient.InferenceServerClient(url)
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for i in range(n):
        inp = grpcclient.InferInput("INPUT0", [8, 2], "FP32")
        inp.set_data_from_numpy(np.full((8, 2), i, np.float32))
        client.async_infer(
            model,
            [inp],
            callback=lambda result, error, i=i: done.put((i, result, error)),
            client_timeout=20.0,
            **({} if timeout_us is None else {"timeout": timeout_us}),
        )
    results: list[Any] = [None] * n
    for _ in range(n):
        i, result, error = done.get(timeout=30)
        results[i] = error if error is not None else result.as_numpy("OUTPUT0")
    client.close()
    return results


@pytest.mark.server
@pytest.mark.parametrize("ensemble", ["bounded_first", "bounded_second"])
def test_triton_answers_an_ensemble_request_a_step_queue_refuses(steps_server: TritonServer, ensemble: str) -> None:
    """Triton before 2.67 could leave an ensemble request unanswered when a step's max_queue_size refused it
    (core PR 466). On the server we run, five batches against a step of one instance and a queue of one: the
    ones past it are refused UNAVAILABLE at once, whichever step refuses, the rest answered; none hangs (a hang
    would end in the call's own 20 s deadline, DEADLINE_EXCEEDED)."""
    results = send_batches(steps_server.grpc_url, ensemble, 5)
    refused = [r for r in results if isinstance(r, grpcclient.InferenceServerException)]
    assert refused and all(e.status() == "StatusCode.UNAVAILABLE" and QUEUE_FULL in e.message() for e in refused), [
        str(r) for r in refused
    ]
    for i, r in enumerate(results):
        assert isinstance(r, grpcclient.InferenceServerException) or (r == i + 2).all(), (i, r)
    (again,) = send_batches(steps_server.grpc_url, ensemble, 1)
    assert isinstance(again, np.ndarray), again


@pytest.mark.server
def test_triton_applies_a_caller_timeout_only_below_a_non_zero_default(steps_server: TritonServer) -> None:
    """Four batches with a 0.3 s timeout against a step of one 0.3 s instance: with a default of 10 s the later
    ones are refused (Request timeout expired) before they run; with a default of 0 (no timeout) Triton ignores
    the caller's timeout and runs every one: why contract/admission.py's default is not 0."""
    refused_with_default = [
        r
        for r in send_batches(steps_server.grpc_url, "slow_override_first", 4, timeout_us=300_000)
        if isinstance(r, grpcclient.InferenceServerException)
    ]
    assert refused_with_default and all(TIMED_OUT in e.message() for e in refused_with_default), refused_with_default
    without_default = send_batches(steps_server.grpc_url, "slow_override_no_default_first", 4, timeout_us=300_000)
    assert all(isinstance(r, np.ndarray) for r in without_default), without_default
