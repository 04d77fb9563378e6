"""TCP ports for the server's endpoints: free ones picked, taken ones found, ``host:port`` written."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now (all sockets held open until every one is picked)."""
    family, _, _, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((addr[0], 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing is bound to on ``host`` at the time of the call."""
    return free_ports(1, host)[0]


def ports_in_use(host: str, ports: Mapping[str, int]) -> list[str]:
    """Which of ``ports`` (``{"gRPC": 8001, ...}``) something already listens on at ``host``, as ``"gRPC 8001"``.

    Probed with ``SO_REUSEADDR``, as servers bind: a port in TIME_WAIT after a stopped server counts as free.
    """
    taken = []
    for what, port in ports.items():
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError:
                taken.append(f"{what} {port}")
    return taken


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:8001``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
