"""The ``tritonserver`` options a launch may set beyond ports and repository: how models are loaded, TLS on
gRPC, restricted protocols and request tracing, each checked when built and turned into the server's flags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
TRACE_MODES = ("triton", "opentelemetry")  # --trace-config mode=...: a JSON file, or OTLP/HTTP export
DEFAULT_TRACE_COLLECTOR = "http://localhost:4318/v1/traces"  # Triton's default OTLP/HTTP traces endpoint
DEFAULT_TRACE_RATE = 1  # every request: tracing is turned on to look at calls (Triton's own default is 1000)


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC endpoint: the server's PEM certificate and key; clients trust ``root_cert``
    (for a self-signed certificate, the certificate itself)."""

    server_cert: Path
    server_key: Path
    root_cert: Path


@dataclass(frozen=True)
class Restriction:
    """Triton's restricted-protocol option: calls of ``protocols`` (gRPC) / the same APIs (HTTP) are
    refused unless they carry the header ``header: value``. E.g. ``("model-repository",)`` guards
    load/unload/index, the control endpoints."""

    protocols: tuple[str, ...]
    header: str
    value: str

    def flag_value(self) -> str:
        return f"{','.join(self.protocols)}:{self.header}={self.value}"

    def grpc_headers(self) -> dict[str, str]:
        """What a gRPC client sends: Triton prefixes the key with ``triton-grpc-protocol-`` on gRPC."""
        return {f"triton-grpc-protocol-{self.header}": self.value}

    def http_headers(self) -> dict[str, str]:
        return {self.header: self.value}


@dataclass(frozen=True)
class Tracing:
    """Triton's request tracing, as ``--trace-config`` flags (Triton 2.51, docs/user_guide/trace.md).

    ``mode="triton"`` writes each traced request's timestamps as JSON to ``file`` (when the server stops);
    ``mode="opentelemetry"`` exports spans over OTLP/HTTP to ``collector`` (``http://host:4318/v1/traces``),
    batched every ``export_delay_ms`` (Triton's ``bsp_schedule_delay``, 5000 by default). ``rate``: trace one
    request in ``rate``. In opentelemetry mode a request carrying a W3C ``traceparent`` header is traced
    whatever the rate (Triton makes its spans children of the caller's), so with this project's client,
    which sends one with every call, every call is; ``rate=0`` traces only those."""

    mode: str
    rate: int = DEFAULT_TRACE_RATE
    file: Path | None = None
    collector: str = DEFAULT_TRACE_COLLECTOR
    export_delay_ms: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in TRACE_MODES:
            raise ValueError(f"trace mode must be one of {TRACE_MODES}, got {self.mode!r}")
        if self.rate < 0:
            raise ValueError(f"trace rate must be >= 0 (trace 1 request in rate; 0 = none sampled), got {self.rate}")
        if self.mode == "triton" and self.file is None:
            raise ValueError("trace mode 'triton' writes a JSON file: give its path (file)")
        if self.mode != "triton" and self.file is not None:
            raise ValueError(f"a trace file is written in trace mode 'triton' only, not {self.mode!r}")
        if not re.match(r"^https?://[^/\s]+", self.collector):
            raise ValueError(f"trace collector {self.collector!r} is not an http(s):// URL (OTLP/HTTP)")
        if self.export_delay_ms is not None and (self.mode != "opentelemetry" or self.export_delay_ms < 1):
            raise ValueError(f"export_delay_ms={self.export_delay_ms} needs mode 'opentelemetry' and >= 1 ms")

    def flags(self) -> list[str]:
        """The ``--trace-config`` flags of this setting."""
        out = [f"--trace-config=mode={self.mode}", "--trace-config=level=TIMESTAMPS"]
        out.append(f"--trace-config=rate={self.rate}")
        if self.mode == "triton":
            out.append(f"--trace-config=triton,file={self.file}")
        else:
            out.append(f"--trace-config=opentelemetry,url={self.collector}")
            if self.export_delay_ms is not None:
                out.append(f"--trace-config=opentelemetry,bsp_schedule_delay={self.export_delay_ms}")
        return out

    def describe(self) -> str:
        """One line for the start banner."""
        sampled = {0: "no request", 1: "every request"}.get(self.rate, f"1 request in {self.rate}")
        if self.mode == "triton":
            return f"tracing: triton, {sampled}, JSON to {self.file} (written when the server stops)"
        header = "every request with a traceparent header (the project's client sends one)"
        if self.rate != 1:
            sampled = header if self.rate == 0 else f"{sampled} and {header}"
        return f"tracing: opentelemetry, {sampled}, OTLP/HTTP to {self.collector}"
