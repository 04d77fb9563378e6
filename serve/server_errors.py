"""What goes wrong when launching ``tritonserver``: not installed, a port taken, not started or not ready."""

from __future__ import annotations

from collections.abc import Sequence


class TritonServerError(RuntimeError):
    """The server could not be found, started, or made ready; the message carries the server's log tail."""

    def __init__(self, message: str, *, log_tail: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail
        self.returncode = returncode


class PortInUseError(TritonServerError):
    """A port asked for explicitly is taken (often by another server); the message is one line naming it."""

    def __init__(self, taken: Sequence[str], host: str) -> None:
        self.taken = tuple(taken)  # e.g. ("gRPC 8001",)
        self.host = host
        super().__init__(f"{self.what()}; pass other ports (or None: any free port)", log_tail="", returncode=None)

    def what(self) -> str:
        ports, verb = ("ports", "are") if len(self.taken) > 1 else ("port", "is")
        return f"{ports} {', '.join(self.taken)} on {self.host} {verb} already in use (another server running?)"


class TritonNotFoundError(TritonServerError):
    """The ``nvidia-pytriton`` wheel (with its bundled ``tritonserver``) is not installed or incomplete."""
