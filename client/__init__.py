"""Python gRPC client of the ASTRO Triton ensemble ``astro``.

Torch-free: imports numpy, tritonclient and the numpy-only ``contract`` package;
``pip install .[client]`` is enough.

    from client import AstroClient, EventHistory
    with AstroClient("127.0.0.1:8001") as c:          # or "10.0.0.5:8001,10.0.0.6:8001": round-robin
        scores = c.score(EventHistory.from_lists(items, behaviors, scenarios, times), candidates, 0, now)

Behaviour and scenario ids index the vocabularies the server publishes (``c.get_spec().behaviors``,
``python -m client health``); ids outside them, timestamps that are not unix seconds and history
events with item id 0 are refused unless :class:`Allow` lets them through.
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
    encoder_inputs,
    grpc_target,
    is_model_loading,
    plan_calls,
    spec_from_model_config,
    split_evenly,
)
from client.validation import Allow, RequestError, ScoreRequest, request_from_json, validate_inputs, validate_request
from contract.blocks import EventHistory
from contract.serving_spec import ServingSpec

__all__ = [
    "Allow",
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
    "encoder_inputs",
    "grpc_target",
    "is_model_loading",
    "plan_calls",
    "request_from_json",
    "spec_from_model_config",
    "split_evenly",
    "validate_inputs",
    "validate_request",
]
