"""Python gRPC client of the ASTRO Triton ensemble ``astro``.

Torch-free: imports numpy, tritonclient and the numpy-only ``contract`` package;
``pip install .[client]`` is enough.

    from client import AstroClient, EventHistory
    with AstroClient("127.0.0.1:8001") as c:  # or "10.0.0.5:8001,10.0.0.6:8001", "triton-headless:8001"
        scores = c.score(EventHistory.from_lists(items, behaviors, scenarios, times), candidates, 0, now)

With several replicas each call goes to the replica that holds its user's cache entry
(:mod:`client.routing`, ``lb="affinity"``), failing over to the next one; ``lb="round_robin"``
spreads calls evenly instead.

Behaviour and scenario ids index the vocabularies the server publishes (``c.get_spec().behaviors``,
``python -m client health``); ids outside them, timestamps that are not unix seconds and history
events with item id 0 are refused unless :class:`Allow` lets them through.
"""

from client.astro_client import AstroClient, AsyncAstroClient
from client.channel import RetryPolicy, grpc_target
from client.errors import ServerError, ServerOverloadedError, ServerUnavailableError, is_model_loading
from client.flows import LB_POLICIES, call_key
from client.planning import ChunkRow, assemble_scores, build_call_inputs, encoder_inputs, plan_calls, split_evenly
from client.routing import Router, route_key, user_route_key
from client.validation import Allow, RequestError, ScoreRequest, request_from_json, validate_inputs, validate_request
from client.wire import spec_from_model_config
from contract.blocks import EventHistory
from contract.routing import ROUTE_KEY_HEADER
from contract.serving_spec import ServingSpec

__all__ = [
    "LB_POLICIES",
    "ROUTE_KEY_HEADER",
    "Allow",
    "AstroClient",
    "AsyncAstroClient",
    "ChunkRow",
    "EventHistory",
    "RequestError",
    "RetryPolicy",
    "Router",
    "ScoreRequest",
    "ServerError",
    "ServerOverloadedError",
    "ServerUnavailableError",
    "ServingSpec",
    "assemble_scores",
    "build_call_inputs",
    "call_key",
    "encoder_inputs",
    "grpc_target",
    "is_model_loading",
    "plan_calls",
    "request_from_json",
    "route_key",
    "spec_from_model_config",
    "split_evenly",
    "user_route_key",
    "validate_inputs",
    "validate_request",
]
