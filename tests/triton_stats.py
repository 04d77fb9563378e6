"""Triton's own statistics, read the way the server tests need them."""

from __future__ import annotations

import time
from collections.abc import Callable

import tritonclient.grpc as grpcclient

from contract.tensors import USER_ENCODER
from serve.triton_server import TritonServer


def cache_counts(server: TritonServer, model: str = USER_ENCODER) -> tuple[int, int]:
    """``model``'s response-cache (hits, misses) on ``server`` so far."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    finally:
        client.close()
    return int(stats.get("cache_hit", {}).get("count", 0)), int(stats.get("cache_miss", {}).get("count", 0))


def poll(done: Callable[[], bool], timeout_s: float = 20) -> bool:
    """Whether ``done()`` comes true within ``timeout_s``. Triton records a request's statistics just after
    its response is sent, so a read right after the answer may not count it yet; the counters only grow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return done()


def delta(after: tuple[int, int], before: tuple[int, int]) -> tuple[int, int]:
    """What two (hits, misses) readings say happened between them."""
    return after[0] - before[0], after[1] - before[1]
