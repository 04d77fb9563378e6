"""The client's options and its gRPC channel: the service config (waitForReady, retries, round_robin), the
address lists, and what is retried by hand (a model still loading) rather than by gRPC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from triton_stub import LOADING_MSG
from tritonclient.utils import InferenceServerException

from client import (
    AstroClient,
    RetryPolicy,
    grpc_target,
    is_model_loading,
)
from client.channel import PROBE_METHODS, RETRYABLE_STATUS_CODES, WAITING_METHODS, HeaderPlugin, channel_args

# ---- client options: gRPC's service config and the header plugin ----------------------------------


def test_retry_policy_backoff_doubles_and_caps() -> None:
    p = RetryPolicy(retries=5, backoff_s=0.1, backoff_max_s=0.3)
    assert [p.delay(k) for k in range(1, 5)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert p.grpc_attempts == 5 and RetryPolicy(retries=1000).grpc_attempts == 5 and RetryPolicy(0).grpc_attempts == 1
    with pytest.raises(ValueError, match="retries=-1"):
        RetryPolicy(retries=-1)


def service_config(**kwargs: Any) -> dict[str, Any]:
    args = dict(channel_args(RetryPolicy(**kwargs)))
    assert args["grpc.enable_retries"] == 1 and args["grpc.lb_policy_name"] == "round_robin"
    config: dict[str, Any] = json.loads(str(args["grpc.service_config"]))
    return config


def test_service_config_waits_retries_unavailable_and_balances() -> None:
    config = service_config(retries=2, backoff_s=0.1, backoff_max_s=0.4)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    waiting, probes = config["methodConfig"]
    assert [n["method"] for n in waiting["name"]] == list(WAITING_METHODS)
    assert "ModelInfer" in WAITING_METHODS and "ModelConfig" in WAITING_METHODS
    assert waiting["waitForReady"] is True
    assert waiting["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.100s",
        "maxBackoff": "0.400s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],  # a replica gone, or a refusal
    }
    assert [n["method"] for n in probes["name"]] == list(PROBE_METHODS)
    assert probes["waitForReady"] is False and "retryPolicy" not in probes  # health: one fail-fast attempt
    no_retries = service_config(retries=0, wait_for_ready=False)["methodConfig"][0]
    assert no_retries["waitForReady"] is False and "retryPolicy" not in no_retries  # gRPC wants maxAttempts >= 2
    # one replica's channel under the affinity router: fail fast, the router fails over to the key's next replica
    replica = json.loads(str(dict(channel_args(RetryPolicy(retries=2), replica=True))["grpc.service_config"]))
    assert replica["methodConfig"][0]["waitForReady"] is False and "retryPolicy" not in replica["methodConfig"][0]


def test_client_options_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        AstroClient(timeout_s=0)
    with pytest.raises(ValueError, match=r"\['root_certificates'\] given but ssl=False"):
        AstroClient(root_certificates="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="root_certificates: no such file"):
        AstroClient(ssl=True, root_certificates="/nonexistent/ca.pem")
    with AstroClient(headers={"X-Api-Key": "k"}) as c:
        assert c.headers == {"x-api-key": "k"}  # gRPC metadata keys must be lowercase
        plugin = c._triton.plugin()  # headers go through tritonclient's plugin, not each call
        assert isinstance(plugin, HeaderPlugin) and plugin.headers == {"x-api-key": "k"}
    with AstroClient() as c:  # no headers: the plugin still sends a traceparent with every call (test_tracing.py)
        plugin = c._triton.plugin()
        assert isinstance(plugin, HeaderPlugin) and plugin.headers == {}


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),  # one address: any gRPC target, as it is
        ("dns:///triton-headless:8001", "dns:///triton-headless:8001"),
        ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("localhost:1,127.0.0.1:2,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),  # names resolved, duplicates once
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_several_addresses_become_one_round_robin_target(url: str, target: str) -> None:
    assert grpc_target(url)[0] == target
    assert grpc_target(url)[1] == tuple(p.strip() for p in url.split(","))


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("127.0.0.1:1,,127.0.0.1:2", "empty address"),
        ("127.0.0.1:1,127.0.0.1", "must be host:port"),
        ("127.0.0.1:1,127.0.0.1:99999", "must be host:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bad_address_lists_are_refused(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AstroClient(url)


# ---- the mutation pin: what is retried, and by whom -------------------------------------------------


def exception(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


BY_HAND: list[tuple[str, str, bool]] = [
    ("NOT_FOUND", LOADING_MSG, True),  # the one thing gRPC cannot know: a model still (re)loading
    ("NOT_FOUND", "Request for unknown model: 'nope' is not found", False),
    ("UNAVAILABLE", "failed to connect", False),  # gRPC's retry policy did that already
    ("UNAVAILABLE", LOADING_MSG, False),
    ("INVALID_ARGUMENT", LOADING_MSG, False),
    ("INTERNAL", LOADING_MSG, False),
    ("UNKNOWN", LOADING_MSG, False),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", False),
    ("RESOURCE_EXHAUSTED", "queue full", False),
    ("CANCELLED", "cancelled", False),
]


@pytest.mark.parametrize(("status", "message", "retried"), BY_HAND)
def test_only_a_loading_model_is_retried_by_hand(status: str, message: str, retried: bool) -> None:
    assert is_model_loading(exception(status, message)) is retried
    assert RETRYABLE_STATUS_CODES == ("UNAVAILABLE", "RESOURCE_EXHAUSTED")  # what gRPC retries on its own
