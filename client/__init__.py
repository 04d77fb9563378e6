"""Python gRPC client of the ASTRO Triton ensemble ``astro``.

Torch-free: imports numpy, tritonclient and the numpy-only ``contract.config``,
``contract.blocks`` and ``contract.serving_spec``; ``pip install .[client]`` is enough.

    from client import AstroClient, EventHistory
    with AstroClient("127.0.0.1:8001") as c:
        scores = c.score(EventHistory.from_lists(items, behaviors, scenarios, times), candidates, 0, now)
"""

from client.astro_client import (
    AstroClient,
    AsyncAstroClient,
    ChunkRow,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    assemble_scores,
    build_call_inputs,
    plan_calls,
    spec_from_model_config,
    split_evenly,
)
from client.validation import RequestError, ScoreRequest, validate_inputs, validate_request
from contract.blocks import EventHistory
from contract.serving_spec import ServingSpec

__all__ = [
    "AstroClient",
    "AsyncAstroClient",
    "ChunkRow",
    "EventHistory",
    "RequestError",
    "RetryPolicy",
    "ScoreRequest",
    "ServerError",
    "ServerUnavailableError",
    "ServingSpec",
    "assemble_scores",
    "build_call_inputs",
    "plan_calls",
    "spec_from_model_config",
    "split_evenly",
    "validate_inputs",
    "validate_request",
]
