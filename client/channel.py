"""The gRPC channels of the clients: waiting, retries and balancing from gRPC's own service config.

:class:`RetryPolicy` says how calls wait and retry; :func:`channel_args` turns it into
tritonclient's channel options (service config, reconnect backoff, retry buffer). Two kinds of
channel:

- *balanced* (``round_robin``, and the only channel for one address): one channel over every
  address of the url (:func:`grpc_target`); calls wait for a server up to their deadline
  (``waitForReady``) and gRPC retries UNAVAILABLE and RESOURCE_EXHAUSTED (a server's refusal)
  with exponential backoff, each attempt on the next address round_robin picks;
- *replica* (``affinity``): one channel per replica, calls fail fast (no waiting, no retry
  inside the channel), because the client's router (:mod:`client.routing`) knows which replica
  comes next for the call's key and fails over there itself.

:class:`HeaderPlugin` adds fixed headers to every call (tritonclient's ``register_plugin``).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tritonclient.grpc as grpcclient

from client.tracing import TRACEPARENT, CallTracer

SERVICE = "inference.GRPCInferenceService"  # Triton's gRPC service, as named in service configs
WAITING_METHODS = ("ModelInfer", "ModelConfig", "ModelMetadata")  # wait for a server, retry UNAVAILABLE
PROBE_METHODS = ("ServerLive", "ServerReady", "ModelReady")  # health probes: one attempt, fail fast
# what gRPC retries on a balanced channel: the server or the connection was not there (UNAVAILABLE, also
# Triton's refusal by a full queue), or a server or proxy refused for lack of room (RESOURCE_EXHAUSTED)
RETRYABLE_STATUS_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
GRPC_MAX_ATTEMPTS = 5  # gRPC clamps retryPolicy.maxAttempts to 5 (and logs an error when asked for more)
RETRY_BUFFER_BYTES = 64 << 20  # gRPC retries only calls whose request fits its buffer (256 KiB by default)


@dataclass(frozen=True)
class RetryPolicy:
    """How calls wait and retry; all of it but the loading retry is done by gRPC.

    ``wait_for_ready``: a call waits for a server to accept it until its deadline, instead of
    failing at once while none is reachable (a restart, a replica coming up). ``retries``: extra
    attempts after UNAVAILABLE (gRPC's ``retryPolicy``, which allows at most 4) and after "model
    still loading" (by hand); the delay before retry ``k`` is ``backoff_s * 2**(k-1)``, capped at
    ``backoff_max_s``, which also bounds how long gRPC waits before re-dialling a refused address.
    """

    retries: int = 2
    backoff_s: float = 0.05
    backoff_max_s: float = 1.0
    wait_for_ready: bool = True

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries={self.retries} must be >= 0")
        if not (self.backoff_s > 0 and self.backoff_max_s > 0):
            raise ValueError(f"backoff_s={self.backoff_s}, backoff_max_s={self.backoff_max_s} must be > 0")

    def delay(self, attempt: int) -> float:
        """Sleep after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))

    @property
    def grpc_attempts(self) -> int:
        return min(self.retries + 1, GRPC_MAX_ATTEMPTS)

    def service_config(self, replica: bool = False) -> dict[str, Any]:
        """gRPC's service config. Balanced (default): round_robin over every address; inference and config
        calls wait for a server and retry :data:`RETRYABLE_STATUS_CODES`; health probes make one fail-fast
        attempt. ``replica``: one replica's channel of the affinity router: every call one fail-fast
        attempt, the router fails over to the key's next replica."""
        waiting: dict[str, Any] = {
            "name": [{"service": SERVICE, "method": m} for m in WAITING_METHODS],
            "waitForReady": self.wait_for_ready and not replica,
        }
        if self.grpc_attempts > 1 and not replica:
            waiting["retryPolicy"] = {
                "maxAttempts": self.grpc_attempts,
                "initialBackoff": _duration(self.backoff_s),
                "maxBackoff": _duration(max(self.backoff_s, self.backoff_max_s)),
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(RETRYABLE_STATUS_CODES),
            }
        probes = {"name": [{"service": SERVICE, "method": m} for m in PROBE_METHODS], "waitForReady": False}
        return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [waiting, probes]}


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration, as service configs spell it: ``"0.050s"``."""
    return f"{max(seconds, 0.001):.3f}s"


def channel_args(
    retry: RetryPolicy, ssl_target_name: str | None = None, replica: bool = False
) -> list[tuple[str, str | int]]:
    """tritonclient's default channel options plus the service config, retries and reconnect backoff.

    After a refused connection gRPC waits its reconnect backoff (1 s, growing to 120 s, by
    default) before dialling again; matched to ``retry`` so that a waiting call reaches a
    server soon after it comes back.
    """
    ka = grpcclient.KeepAliveOptions()
    low_ms = max(10, round(retry.backoff_s * 1000))
    high_ms = max(low_ms, round(retry.backoff_max_s * 1000))
    args: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(ka.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", low_ms),
        ("grpc.min_reconnect_backoff_ms", low_ms),
        ("grpc.max_reconnect_backoff_ms", high_ms),
        ("grpc.service_config", json.dumps(retry.service_config(replica))),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if ssl_target_name is not None:
        args.append(("grpc.ssl_target_name_override", ssl_target_name))
    return args


Endpoint = ipaddress.IPv4Address | ipaddress.IPv6Address
DNS_SCHEME = "dns:///"  # gRPC's DNS target prefix; routing resolves such a name itself


def url_parts(url: str) -> list[str]:
    """The comma-separated addresses of ``url``, stripped; an empty one is refused."""
    parts = [p.strip() for p in url.split(",")]
    if not all(parts):
        raise ValueError(f"url {url!r} has an empty address; separate host:port addresses with commas")
    return parts


def host_port(part: str, url: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port``, optionally ``dns:///host:port``) -> (host, port)."""
    host, sep, port_text = part.removeprefix(DNS_SCHEME).rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {part!r} in url {url!r} must be host:port (several: host:port,host:port)")
    return host, int(port_text)


def grpc_target(url: str) -> tuple[str, tuple[str, ...]]:
    """(the gRPC target, the addresses it names) for ``url``.

    One address is used as it is (``host:port``, or any gRPC target such as
    ``dns:///triton-headless:8001``, which gRPC resolves to every replica). Several comma-separated
    ``host:port`` become one ``ipv4:`` (or ``ipv6:``) target that ``round_robin`` balances; host
    names among them are resolved once, here (IPv4 preferred).
    """
    parts = url_parts(url)
    if len(parts) == 1:
        return parts[0], (parts[0],)
    return _ip_target(url, resolve_endpoints(url)), tuple(parts)


def resolve_endpoints(url: str) -> dict[tuple[str, int], Endpoint]:
    """Every (ip, port) the addresses of ``url`` name now: IP literals as they are, host names resolved
    to all their addresses (a headless Service's name gives one per replica; IPv4 preferred)."""
    endpoints: dict[tuple[str, int], Endpoint] = {}
    for part in url_parts(url):
        host, port = host_port(part, url)
        for ip in _resolve(host, port, part):
            endpoints[(str(ip), port)] = ip
    return endpoints


def resolve_replicas(url: str) -> tuple[str, ...]:
    """The replicas ``url`` names now, each as the ``ip:port`` (``[ip]:port``) a channel dials, sorted."""
    return tuple(
        sorted(
            f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}" for (_, port), ip in resolve_endpoints(url).items()
        )
    )


def names_hosts(url: str) -> bool:
    """Whether ``url`` names any host by name (its replica set can change: re-resolve it)."""
    for part in url_parts(url):
        try:
            ipaddress.ip_address(host_port(part, url)[0])
        except ValueError:
            return True
    return False


def _ip_target(url: str, endpoints: Mapping[tuple[str, int], Endpoint]) -> str:
    versions = {ip.version for ip in endpoints.values()}
    if len(versions) > 1:
        raise ValueError(f"url {url!r} mixes IPv4 and IPv6 addresses; gRPC balances one family per channel")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in endpoints)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in endpoints)


def _resolve(host: str, port: int, part: str) -> list[Endpoint]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"address {part!r}: cannot resolve {host!r} ({e})") from e
    ips = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos))
    v4: list[Endpoint] = [ip for ip in ips if ip.version == 4]
    return v4 or ips


class HeaderPlugin(grpcclient.InferenceServerClientPlugin):  # type: ignore[misc]  # untyped base
    """Adds ``headers`` (gRPC metadata) and a fresh ``traceparent`` to every call of the tritonclient it serves."""

    def __init__(self, headers: Mapping[str, str], tracer: CallTracer) -> None:
        self.headers = dict(headers)
        self.tracer = tracer

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)
        request.headers[TRACEPARENT] = self.tracer.next_header()
