"""Waiting for a server (gRPC's waitForReady, re-dialling, the affinity client's wait for a replica) and
round_robin over several addresses.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs installed; the tests only start a server
import numpy as np
import pytest
from client_samples import (
    NOW,
    history,
    raises,
    request,
)
from triton_stub import SMALL, start_stub

from client import (
    AstroClient,
    AsyncAstroClient,
    RetryPolicy,
    ServerUnavailableError,
)
from client.channel import channel_args
from client.flows import PROBE_TIMEOUT_S

# ---- waiting for a server: gRPC's waitForReady ----------------------------------------------


def test_waits_for_a_server_until_the_deadline_then_says_unavailable(closed_port: int) -> None:
    url = f"127.0.0.1:{closed_port}"
    with AstroClient(url, timeout_s=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.score(history(), [1, 2], 0, NOW)
        elapsed = time.monotonic() - t0
    err = info.value
    assert 1.0 <= elapsed < 1.0 + PROBE_TIMEOUT_S + 1.0
    assert err.status == "StatusCode.UNAVAILABLE" and err.attempts == 1
    assert url in str(err) and "get_model_config" in str(err) and "within its deadline (timeout_s=1 s" in str(err)
    assert err.server_message and "onnect" in err.server_message  # gRPC's "Failed to connect ... Connection refused"


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_without_waiting_unavailable_fails_fast(closed_port: int, retries: int) -> None:
    timeout_s = 10.0
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=timeout_s, retries=retries, wait_for_ready=False) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.get_spec()
        elapsed = time.monotonic() - t0
    assert elapsed < timeout_s / 2, f"{elapsed:.1f} s: waited for a server (until timeout_s={timeout_s:g})"
    assert info.value.status == "StatusCode.UNAVAILABLE"
    assert info.value.server_message and "onnect" in info.value.server_message


def test_async_waits_then_says_unavailable(closed_port: int) -> None:
    async def go() -> tuple[ServerUnavailableError, float, dict[str, Any]]:
        async with AsyncAstroClient(f"127.0.0.1:{closed_port}", timeout_s=1.0) as c:
            t0 = time.monotonic()
            try:
                await c.score_batch([request(), request(seed=1)])
            except ServerUnavailableError as e:
                return e, time.monotonic() - t0, await c.health()
        raise AssertionError("no error against a closed port")

    err, elapsed, health = asyncio.run(go())
    assert 1.0 <= elapsed < 1.0 + PROBE_TIMEOUT_S + 1.0 and "within its deadline (timeout_s=1 s" in str(err)
    assert health["ready"] is False and health["server_live"] is False and "UNAVAILABLE" in health["error"]


def test_health_against_a_closed_port_says_not_ready_at_once(closed_port: int) -> None:
    timeout_s = 10.0
    with AstroClient(f"127.0.0.1:{closed_port}", timeout_s=timeout_s) as c:
        t0 = time.monotonic()
        h = c.health()
        assert c.is_ready() is False
        elapsed = time.monotonic() - t0
    # probes do not wait for a server: waiting would take timeout_s per probe
    assert elapsed < timeout_s / 2, f"{elapsed:.1f} s: a probe waited for a server (timeout_s={timeout_s:g})"
    assert h["ready"] is False and h["server_live"] is False and "UNAVAILABLE" in h["error"] and h["served"] is None


def test_request_errors_raise_before_any_network_call(closed_port: int) -> None:
    timeout_s = 10.0
    with AstroClient(f"127.0.0.1:{closed_port}", retries=0, timeout_s=timeout_s) as c:
        t0 = time.monotonic()
        raises(["candidates", "empty"], c.score, history(), [], 0, 0)
        raises(["timestamp", "milliseconds"], c.score, history(), [1], 0, NOW * 1000)
        elapsed = time.monotonic() - t0
    # a call to the closed port would wait for a server until timeout_s (and then say UNAVAILABLE)
    assert elapsed < timeout_s / 2, f"{elapsed:.1f} s: the client waited for a server (timeout_s={timeout_s:g})"


def reconnect_backoff_ms(args: list[tuple[str, str | int]]) -> tuple[Any, ...]:
    options = dict(args)
    return tuple(options.get(f"grpc.{k}_reconnect_backoff_ms") for k in ("initial", "min", "max"))


def test_the_channel_re_dials_within_the_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a refused connection gRPC waits its reconnect backoff before dialling again (1 s, growing to 120 s,
    by default); the clients' channels take it from their RetryPolicy."""
    assert reconnect_backoff_ms(channel_args(RetryPolicy(backoff_s=0.05, backoff_max_s=0.2))) == (50, 50, 200)
    assert reconnect_backoff_ms(channel_args(RetryPolicy(backoff_s=0.001, backoff_max_s=0.002))) == (10, 10, 10)
    opened: list[list[tuple[str, str | int]]] = []
    real = grpc.insecure_channel

    def insecure_channel(url: str, options: list[tuple[str, str | int]]) -> Any:
        opened.append(options)
        return real(url, options)

    monkeypatch.setattr(grpc, "insecure_channel", insecure_channel)
    with AstroClient("127.0.0.1:1", backoff_s=0.3, backoff_max_s=2.0):
        pass
    assert [reconnect_backoff_ms(o) for o in opened] == [(300, 300, 2000)]  # what tritonclient's channel got
    aio = AsyncAstroClient("127.0.0.1:1", backoff_s=0.3, backoff_max_s=2.0)
    assert reconnect_backoff_ms(aio._triton_kwargs["channel_args"]) == (300, 300, 2000)


LATE_S = 3.25  # gRPC's default backoff dials near 1, 2.6 and 5.2 s (+-20%): never between 3.12 and 4.13 s


def test_a_server_that_comes_up_late_is_waited_for() -> None:
    """The client re-dials within backoff_max_s of the server's start; with gRPC's default reconnect backoff it
    would reach a server that came up at ``LATE_S`` only at its next dial, 0.85 s or more later."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    servers: list[grpc.Server] = []
    up: list[float] = []

    def come_up() -> None:
        time.sleep(LATE_S)
        s.close()
        servers.append(start_stub(SMALL, port)[0])
        up.append(time.monotonic())

    with AstroClient(f"127.0.0.1:{port}", timeout_s=30.0, backoff_s=0.02, backoff_max_s=0.05) as c:
        late = threading.Thread(target=come_up)
        late.start()
        try:
            assert c.get_spec() == SMALL  # the default client waits: no retries are spent
            answered = time.monotonic()
        finally:
            late.join()
            for server in servers:
                server.stop(grace=None)
    waited = answered - up[0]  # < 0: answered while start() was returning
    assert waited < 0.7, f"answered {waited:.2f} s after the server came up: not re-dialled within backoff_max_s"


# ---- several addresses: gRPC's round_robin ---------------------------------------------------


def test_several_addresses_share_the_load_and_a_stopped_one_costs_nothing() -> None:
    (server_a, stub_a, port_a), (server_b, stub_b, port_b) = start_stub(SMALL), start_stub(SMALL)
    try:
        # round_robin named: the default over several addresses is affinity, which puts each of these 20
        # users on its own hash's replica (a 16/4 split, below the bound of 5, came once in ~100 runs)
        with AstroClient(f"127.0.0.1:{port_a},127.0.0.1:{port_b}", lb="round_robin") as c:
            first = [c.score(history(seed=i), [1, 2, 3], 0, NOW) for i in range(20)]
            assert len(stub_a.batch_shapes) >= 5 and len(stub_b.batch_shapes) >= 5  # both served
            server_b.stop(grace=None)
            served_b = len(stub_b.batch_shapes)
            after = [c.score(history(seed=i), [1, 2, 3], 0, NOW) for i in range(20)]
        assert len(stub_b.batch_shapes) == served_b and len(stub_a.batch_shapes) >= 25  # all went to a
        for a, b in zip(first, after, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        server_a.stop(grace=None)
        server_b.stop(grace=None)


def test_affinity_waits_for_a_replica_to_come_up_within_the_deadline() -> None:
    """Both replicas down at first (connections refused): the affinity client keeps trying the key's replicas
    with backoff until one comes up, as the balanced channel's waitForReady does, within the deadline."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    servers: list[grpc.Server] = []

    def come_up() -> None:
        time.sleep(1.0)
        socks[1].close()
        servers.append(start_stub(SMALL, ports[1])[0])

    late = threading.Thread(target=come_up)
    with AstroClient(",".join(f"127.0.0.1:{p}" for p in ports), timeout_s=20, backoff_s=0.02, backoff_max_s=0.1) as c:
        assert c.lb == "affinity"
        late.start()
        try:
            assert c.get_spec() == SMALL
        finally:
            late.join()
            socks[0].close()
            for server in servers:
                server.stop(grace=None)
