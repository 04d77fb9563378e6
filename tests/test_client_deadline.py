"""The caller's deadline reaches the server, and refusals are tried again elsewhere or reported as overload.

Two real servers of the tiny model: ``slow``, whose ``user_encoder`` config (written here into a copy
of the repository) holds every request 3 s in its dynamic batcher's queue, keeps at most one request
queued, and lets a request's own ``timeout`` override the queue's (``allow_timeout_override``,
``timeout_action: REJECT``); and ``plain``, as exported.

- A score whose deadline (0.5 s) passes while its call waits in ``slow``'s queue is refused there and
  never computed: Triton's statistics show the failures (the first attempt's and those of the retries
  within the deadline) and no execution. The client sends the remaining deadline's share per queue as
  Triton's per-request timeout; without it the request would run at 3 s for a caller long gone.
- With ``slow``'s queue full, a call is refused at once (UNAVAILABLE, "Exceeds maximum queue size"):
  alone, the client gives up before its deadline with :class:`ServerOverloadedError` naming the
  limit; with ``plain`` beside it, the affinity client fails over and the call is answered.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from server_helpers import model_statistics, start_together, write_served_repository
from triton_stats import poll
from tritonclient.grpc import model_config_pb2 as mc

from client import AstroClient, EventHistory, ScoreRequest, ServerError, ServerOverloadedError, call_key
from client.planning import build_call_inputs, plan_calls
from client.routing import ranking
from contract.config import AstroConfig
from contract.serving_spec import ServingSpec
from contract.tensors import ENSEMBLE, USER_ENCODER
from export.onnx_graphs import GraphPaths
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
NOW = 1_700_000_000
HOLD_US = 3_000_000  # slow's batcher holds each request this long before running it
CFG = AstroConfig.from_name("tiny")
SPEC = ServingSpec.from_config(CFG)


def hold_and_bound(config_path: Path) -> None:
    """``user_encoder`` of a copy: requests wait :data:`HOLD_US` in the queue, at most one queued, a request's
    own timeout overriding the queue's 60 s (Triton applies an override only below a non-zero default). The
    export's preferred batch of one request is cleared: a batch reaching a preferred size runs at once, and
    one request would then never wait out the hold."""
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    batching = config.dynamic_batching
    del batching.preferred_batch_size[:]
    batching.max_queue_delay_microseconds = HOLD_US
    policy = batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = 60_000_000
    policy.allow_timeout_override = True
    policy.max_queue_size = 1
    config_path.write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def servers(
    tiny_graphs: Callable[[str], GraphPaths], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonServer, TritonServer]]:
    """(slow, plain), started side by side."""
    root = tmp_path_factory.mktemp("deadline")
    for name in ("slow", "plain"):
        write_served_repository(root / name, CFG, tiny_graphs("fp32"))
    hold_and_bound(root / "slow" / USER_ENCODER / "config.pbtxt")
    slow, plain = TritonServer(root / "slow"), TritonServer(root / "plain")
    with slow, plain:
        start_together([slow, plain])
        yield slow, plain


def user(seed: int) -> ScoreRequest:
    rng = np.random.default_rng(seed)
    n = 10
    history = EventHistory(
        rng.integers(1, 10**9, n), rng.integers(0, 4, n), rng.integers(0, 4, n), NOW - np.arange(n, 0, -1) * 60
    )
    return ScoreRequest(history, rng.integers(1, 10**9, 5), 1, NOW)


def encoder_stats(server: TritonServer) -> tuple[int, int]:
    """``user_encoder``'s (executions, failed requests) so far."""
    stats = model_statistics(server.grpc_url, USER_ENCODER)
    return int(stats.get("execution_count", 0)), int(stats["inference_stats"].get("fail", {}).get("count", 0))


def ensemble_stats(server: TritonServer) -> tuple[int, int]:
    """The ensemble's (requests answered, requests failed) so far."""
    counts = model_statistics(server.grpc_url, ENSEMBLE)["inference_stats"]
    return int(counts.get("success", {}).get("count", 0)), int(counts.get("fail", {}).get("count", 0))


def pending(server: TritonServer) -> int:
    """Requests waiting in ``user_encoder``'s queue (Triton's metric)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("nv_inference_pending_request_count") and f'model="{USER_ENCODER}"' in line:
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def score(client: AstroClient, r: ScoreRequest, deadline_s: float) -> object:
    return client.score(r.history, r.candidates, r.scenario, r.timestamp, deadline_s=deadline_s)


class Occupant:
    """One request that fills ``server``'s encoder queue for :data:`HOLD_US` (answered after it)."""

    def __init__(self, server: TritonServer, seed: int) -> None:
        self.client = AstroClient(server.grpc_url)
        self.client.get_spec()
        self.result: list[object] = []
        self.thread = threading.Thread(target=lambda: self.result.append(score(self.client, user(seed), 30)))
        self.thread.start()
        assert poll(lambda: pending(server) >= 1), "the occupant never queued"

    def finish(self) -> None:
        self.thread.join(timeout=60)
        self.client.close()
        assert len(self.result) == 1, "the occupant was not answered"


def test_a_call_whose_deadline_passes_in_the_queue_is_refused_there_and_never_run(
    servers: tuple[TritonServer, TritonServer],
) -> None:
    slow, _ = servers
    with AstroClient(slow.grpc_url) as client:
        client.get_spec()
        executions, failures = encoder_stats(slow)
        t0 = time.monotonic()
        with pytest.raises(ServerError) as info:
            score(client, user(1), deadline_s=0.5)
        elapsed = time.monotonic() - t0
    assert info.value.status == "StatusCode.DEADLINE_EXCEEDED" and elapsed < HOLD_US / 1e6, (info.value, elapsed)
    # the server refused the request in the queue once its timeout (its share of the caller's deadline) passed,
    # and any retry gRPC made before the deadline the same way ...
    assert poll(lambda: encoder_stats(slow)[1] > failures), f"no refusal at the server: {encoder_stats(slow)}"
    time.sleep(HOLD_US / 1e6)  # ... and when the batcher's hold is over, nothing runs any of them
    assert encoder_stats(slow)[0] == executions and encoder_stats(slow)[1] > failures


def test_refusals_on_the_only_replica_end_in_an_overloaded_error_naming_the_limit(
    servers: tuple[TritonServer, TritonServer],
) -> None:
    slow, _ = servers
    occupant = Occupant(slow, seed=2)
    try:
        with AstroClient(slow.grpc_url, retries=2) as client:
            client.get_spec()
            t0 = time.monotonic()
            with pytest.raises(ServerOverloadedError) as info:
                score(client, user(3), deadline_s=10)
            elapsed = time.monotonic() - t0
    finally:
        occupant.finish()
    err = info.value
    print(err)
    assert elapsed < 2.0, f"{elapsed:.2f} s: a refusal must come at once, not after the queue's hold"
    assert err.status == "StatusCode.UNAVAILABLE" and "Exceeds maximum queue size" in (err.server_message or "")
    assert "overloaded" in str(err) and "max_queue_size" in err.limit and "add replicas" in str(err)


def test_a_refused_call_fails_over_to_the_keys_next_replica(servers: tuple[TritonServer, TritonServer]) -> None:
    slow, plain = servers
    seed = next(s for s in range(100, 200) if home_is(user(s), slow, servers))
    occupant = Occupant(slow, seed=4)
    try:
        with AstroClient(f"{slow.grpc_url},{plain.grpc_url}") as client:
            assert client.lb == "affinity"
            client.get_spec()
            answered, refused = ensemble_stats(plain)[0], ensemble_stats(slow)[1]
            t0 = time.monotonic()
            scores = score(client, user(seed), deadline_s=10)
            elapsed = time.monotonic() - t0
    finally:
        occupant.finish()
    assert isinstance(scores, np.ndarray) and scores.shape == (5, CFG.n_tasks)
    assert elapsed < 2.0, f"{elapsed:.2f} s: waited out the full queue instead of failing over"
    assert ensemble_stats(plain)[0] == answered + 1  # answered by the key's second choice ...
    assert ensemble_stats(slow)[1] > refused  # ... after its first choice refused it (2.51 counts a refusal twice)


def home_is(r: ScoreRequest, server: TritonServer, servers: tuple[TritonServer, TritonServer]) -> bool:
    (inputs,) = build_call_inputs(plan_calls([len(r.candidates)], SPEC.max_candidates), [r], SPEC)
    return ranking(call_key(r, inputs), [s.grpc_url for s in servers])[0] == server.grpc_url
