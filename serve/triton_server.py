"""Launch the real Triton Inference Server that ships in the ``nvidia-pytriton`` wheel.

The wheel carries a complete ``tritonserver`` (2.51) binary, its shared libraries
(``nvidia_pytriton.libs``), the Python backend and one Python-backend stub per
Python version. This module runs that binary directly (no PyTriton ``Triton``
object, no container) against an ordinary model repository.

Launch recipe (found by experiment on a CPU-only Linux machine):

* ``LD_LIBRARY_PATH`` = directory of *this* interpreter's ``libpython3.X.so.1.0``
  (``sysconfig`` ``LIBDIR``) : the wheel's ``nvidia_pytriton.libs`` : the caller's value.
  The libpython entry matters: without it the stub binds to whatever
  ``libpython3.X.so.1.0`` the system loader finds (on Debian that is
  ``/usr/lib/x86_64-linux-gnu``'s 3.11.2), i.e. a different patch release than the
  stdlib and venv it then loads — or fails outright where the system has none.
* ``PATH`` starts with the virtualenv's ``bin``: the embedded interpreter of the stub
  derives ``sys.prefix`` from the ``python3`` it finds on ``PATH``, which is how it
  sees the venv's site-packages (numpy, onnxruntime, ...).
* ``--backend-directory`` = a private directory holding ``python/libtriton_python.so``,
  ``python/triton_python_backend_utils.py`` and ``python/triton_python_backend_stub``
  (the stub matching ``sys.version_info``), copied from the wheel.
* ``--cache-directory`` = the wheel's ``tritonserver/caches`` (the default,
  ``/opt/tritonserver/caches``, does not exist outside the NGC container).
* ``--allow-gpu-metrics=false`` unless asked otherwise: on machines without an NVIDIA
  driver the GPU metrics collector only logs NVML/DCGM failures.
* All three endpoints bound to the requested host (127.0.0.1 by default).

Behaviour worth knowing: in ``none`` mode the server loads every model *before* it
opens its sockets, and exits (code 1) when one fails to load, so the load error is in
the log; it also exits when a port is taken ("already in use"), which this module
retries with fresh ports when the ports were picked automatically.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "MODEL_CONTROL_MODES",
    "PortInUseError",
    "Tracing",
    "TritonInstall",
    "TritonNotFoundError",
    "TritonServer",
    "TritonServerError",
    "find_tritonserver",
    "free_port",
    "free_ports",
    "iter_models",
    "ports_in_use",
]

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
TRACE_MODES = ("triton", "opentelemetry")  # --trace-config mode=...: a JSON file, or OTLP/HTTP export
DEFAULT_TRACE_COLLECTOR = "http://localhost:4318/v1/traces"  # Triton's default OTLP/HTTP traces endpoint
DEFAULT_TRACE_RATE = 1  # every request: tracing is turned on to look at calls (Triton's own default is 1000)
INSTALL_HINT = 'pip install "nvidia-pytriton>=0.5"  (or: pip install -e ".[serve]")'
_LOG_TAIL_LINES = 60
_PORT_RETRIES = 3
# Repository-index reasons that do not mean "the load failed".
_BENIGN_UNAVAILABLE_REASONS = frozenset({"", "unloaded", "unloading"})
# Error lines every run prints on a machine without an NVIDIA driver; left out of the error summary.
_NOISE_ERRORS = ("CudaDriverHelper has not been initialized",)
# Written at the top of the log on such machines, so nobody chases those lines.
_CPU_HOST_NOTE = (
    "# astro-serving: this host has no NVIDIA driver, so the CUDA lines below are expected and harmless "
    '("CUDA driver version is insufficient", "CUDA memory pool disabled", "CudaDriverHelper has not been '
    'initialized"): the models run on the CPU\n'
)


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


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the wheel's Triton server live, plus what the Python backend stub needs."""

    binary: Path
    """``pytriton/tritonserver/bin/tritonserver``."""
    libs_dir: Path
    """Shared libraries the binary links against (``nvidia_pytriton.libs``)."""
    backend_library: Path
    """``libtriton_python.so`` (the Python backend)."""
    backend_utils: Path
    """``triton_python_backend_utils.py``, imported by every ``model.py``."""
    python_stub: Path
    """``triton_python_backend_stub`` built for this interpreter's ``X.Y``."""
    cache_dir: Path | None
    """Response-cache plugins (``caches/local``), or None when the wheel has none."""
    python_bin_dir: Path
    """The running environment's scripts directory (the venv's ``bin``), put first on ``PATH``."""
    python_lib_dir: Path | None
    """Directory holding this interpreter's ``libpython3.X.so.1.0``, or None for a static build."""

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The server's environment: ``base`` (default ``os.environ``) with ``LD_LIBRARY_PATH`` and ``PATH`` set."""
        env = dict(os.environ if base is None else base)
        lib_path = [str(self.libs_dir)]
        if self.python_lib_dir is not None:
            lib_path.insert(0, str(self.python_lib_dir))
        if env.get("LD_LIBRARY_PATH"):
            lib_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
        env["PATH"] = os.pathsep.join(p for p in (str(self.python_bin_dir), env.get("PATH", "")) if p)
        return env

    def build_backend_dir(self, dest: Path) -> Path:
        """Fill ``dest/python/`` with the backend library, its utils module and this Python's stub; return ``dest``."""
        python_dir = dest / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for src, name in (
            (self.backend_library, "libtriton_python.so"),
            (self.backend_utils, "triton_python_backend_utils.py"),
            (self.python_stub, "triton_python_backend_stub"),
        ):
            # copied beside, then renamed over: a relaunch in the same workdir replaces a stub that a previous
            # launch's process may still be running (writing into it in place fails with "Text file busy")
            partial = python_dir / f".{name}.partial"
            shutil.copy2(src, partial)
            partial.replace(python_dir / name)
        (python_dir / "triton_python_backend_stub").chmod(0o755)
        return dest


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin is not None and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).resolve().parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]).resolve() if locations else None


def _python_lib_dir() -> Path | None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname:
        return None
    path = Path(str(libdir))
    return path if (path / str(soname)).exists() else None


def find_tritonserver() -> TritonInstall:
    """Locate the ``tritonserver`` binary, its libraries and the Python backend files in the installed wheel.

    Raises:
        TritonNotFoundError: the wheel is missing or lacks a file (the message names it and how to install).
    """
    pkg = _package_dir("pytriton")
    if pkg is None:
        raise TritonNotFoundError(
            "the Triton Inference Server binary comes from the nvidia-pytriton wheel, which is not installed "
            f"in this environment ({sys.executable}). Install it with: {INSTALL_HINT}"
        )
    dist = pkg / "tritonserver"
    libs_candidates = [pkg.parent / "nvidia_pytriton.libs", dist / "external_libs"]  # wheel / editable layout
    libs_dir = next((p for p in libs_candidates if p.is_dir()), libs_candidates[0])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs_root = dist / "python_backend_stubs"
    install = TritonInstall(
        binary=dist / "bin" / "tritonserver",
        libs_dir=libs_dir,
        backend_library=dist / "backends" / "python" / "libtriton_python.so",
        backend_utils=dist / "backends" / "python" / "triton_python_backend_utils.py",
        python_stub=stubs_root / version / "triton_python_backend_stub",
        cache_dir=(dist / "caches") if (dist / "caches").is_dir() else None,
        python_bin_dir=Path(sysconfig.get_path("scripts")),
        python_lib_dir=_python_lib_dir(),
    )
    required = {
        "tritonserver binary": install.binary,
        "server libraries": install.libs_dir,
        "Python backend library": install.backend_library,
        "Python backend utils": install.backend_utils,
        f"Python {version} backend stub": install.python_stub,
    }
    missing = [f"{what}: {path}" for what, path in required.items() if not path.exists()]
    if missing:
        available = sorted(p.name for p in stubs_root.iterdir()) if stubs_root.is_dir() else []
        raise TritonNotFoundError(
            f"the nvidia-pytriton install at {pkg} is incomplete (stubs available for Python {available}); missing:\n  "
            + "\n  ".join(missing)
            + f"\nReinstall it with: {INSTALL_HINT}"
        )
    if not os.access(install.binary, os.X_OK):
        raise TritonNotFoundError(f"{install.binary} is not executable; reinstall with: {INSTALL_HINT}")
    return install


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


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Zombies do not count: killed stubs are reparented, and
    a container whose PID 1 never reaps (``docker run`` without ``--init``) keeps them forever."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process of group ``pgid`` runs any more (killed stubs take a moment to exit)."""
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reap(proc: subprocess.Popen[bytes], workdir: Path | None) -> None:
    """Last-resort cleanup when a TritonServer is garbage-collected or the interpreter exits while it runs."""
    if proc.poll() is None:
        _kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


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


class TritonServer:
    """One ``tritonserver`` process serving a model repository (context manager: stops and cleans up on exit).

    Ports left as None are picked from the free loopback ports at construction time (and re-picked if the
    server then finds one taken). The URLs are ``host:port`` for gRPC and HTTP (what ``tritonclient`` takes)
    and ``http://host:port/metrics`` for the Prometheus metrics endpoint.

    Example::

        with TritonServer(Path("model_repository")) as server:
            server.start(ready_models=["astro"])
            client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    """

    def __init__(
        self,
        repository: Path,
        *,
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        log_file: Path | None = None,
        log_verbose: int = 0,
        allow_gpu_metrics: bool = False,
        grpc_tls: GrpcTls | None = None,
        restricted: Restriction | None = None,
        cache_size: int | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {MODEL_CONTROL_MODES}, got {model_control_mode!r}")
        if load_models and model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit' (tritonserver rejects it otherwise)")
        if log_verbose < 0:
            raise ValueError(f"log_verbose must be >= 0, got {log_verbose}")
        if cache_size is not None and cache_size < 1:
            raise ValueError(f"cache_size must be >= 1 byte or None (no response cache), got {cache_size}")
        for name, port in (("grpc_port", grpc_port), ("http_port", http_port), ("metrics_port", metrics_port)):
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"{name} must be in 1..65535 or None (pick a free port), got {port}")
        self.repository = Path(repository).expanduser().resolve()
        self.host = host
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.extra_args = tuple(extra_args)
        self.log_verbose = log_verbose
        self.allow_gpu_metrics = allow_gpu_metrics
        self.grpc_tls = grpc_tls
        self.restricted = restricted
        self.cache_size = cache_size
        self.tracing = tracing
        self._requested_ports = (grpc_port, http_port, metrics_port)
        self.grpc_port, self.http_port, self.metrics_port = self._pick_ports()
        self._user_log_file = Path(log_file).expanduser().resolve() if log_file is not None else None
        self._workdir: Path | None = None
        self._log_path: Path | None = self._user_log_file
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # ----------------------------------------------------------------- addresses

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (for ``tritonclient.grpc.InferenceServerClient``)."""
        return _host_port(self.host, self.grpc_port)

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP/REST endpoint (for ``tritonclient.http.InferenceServerClient``)."""
        return _host_port(self.host, self.http_port)

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics page, ``http://host:port/metrics``."""
        return f"http://{_host_port(self.host, self.metrics_port)}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id of the server (also its process-group id), or None if it was never started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The file receiving the server's stdout and stderr (a temp file unless ``log_file`` was given)."""
        return self._log_path

    @property
    def command(self) -> list[str]:
        """The last command line used to launch the server."""
        return list(self._command)

    def _pick_ports(self) -> tuple[int, int, int]:
        missing = sum(p is None for p in self._requested_ports)
        fresh = iter(free_ports(missing, self.host) if missing else [])
        grpc, http, metrics = (p if p is not None else next(fresh) for p in self._requested_ports)
        return grpc, http, metrics

    # ----------------------------------------------------------------- state

    def is_running(self) -> bool:
        """True while the server process exists (live or not yet ready)."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr during the current (or last) run."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        with self._log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", errors="replace")

    # ----------------------------------------------------------------- lifecycle

    def _build_command(self, install: TritonInstall, backend_dir: Path) -> list[str]:
        cmd = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control_mode}",
            *(f"--load-model={name}" for name in self.load_models),
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--allow-gpu-metrics={'true' if self.allow_gpu_metrics else 'false'}",
            f"--log-verbose={self.log_verbose}",
        ]
        if install.cache_dir is not None:
            cmd.append(f"--cache-directory={install.cache_dir}")
        if self.cache_size is not None:  # the local response cache, for models whose config enables it
            cmd.append(f"--cache-config=local,size={self.cache_size}")
        if self.grpc_tls is not None:
            cmd += [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={self.grpc_tls.server_cert}",
                f"--grpc-server-key={self.grpc_tls.server_key}",
            ]
        if self.restricted is not None:
            cmd += [
                f"--grpc-restricted-protocol={self.restricted.flag_value()}",
                f"--http-restricted-api={self.restricted.flag_value()}",
            ]
        if self.tracing is not None:
            cmd += self.tracing.flags()
        cmd.extend(self.extra_args)  # last, so a flag given here overrides the defaults above
        return cmd

    def _launch(self, install: TritonInstall) -> None:
        if self._workdir is None or not self._workdir.is_dir():
            self._workdir = Path(tempfile.mkdtemp(prefix="astro-tritonserver-"))
        backend_dir = install.build_backend_dir(self._workdir / "backends")
        if self._user_log_file is not None:
            self._user_log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_path = self._user_log_file
        else:
            self._log_path = self._workdir / "tritonserver.log"
        self._command = self._build_command(install, backend_dir)
        with self._log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"# astro-serving: {shlex.join(self._command)}\n".encode())
            if not _nvidia_driver_present():
                log.write(_CPU_HOST_NOTE.encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command,
                env=install.environment(),
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop()/kill() reach the Python backend stubs too
            )
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._workdir)

    def start(self, ready_models: Sequence[str] = (), timeout_s: float = 120) -> None:
        """Launch the server and block until it is live and every model in ``ready_models`` is ready.

        Raises:
            TritonNotFoundError: the wheel is not installed.
            TritonServerError: the process exited, a model failed to load, or ``timeout_s`` passed; the message
                contains the server's error lines and log tail (a model load error names its file there).
        """
        if self.is_running():
            raise TritonServerError(f"tritonserver is already running (pid {self.pid})")
        if not self.repository.is_dir():
            raise TritonServerError(f"model repository {self.repository} is not a directory")
        install = find_tritonserver()
        auto_ports = any(p is None for p in self._requested_ports)
        self.check_ports()
        deadline = time.monotonic() + timeout_s
        for attempt in range(_PORT_RETRIES):
            self._launch(install)
            try:
                self._wait_ready(tuple(ready_models), deadline)
                return
            except TritonServerError as exc:
                self.kill()
                port_clash = "already in use" in exc.log_tail
                if port_clash:
                    self.check_ports()  # taken since the check above: say which, in one line
                if not (auto_ports and port_clash and exc.returncode is not None and attempt + 1 < _PORT_RETRIES):
                    raise
                self.grpc_port, self.http_port, self.metrics_port = self._pick_ports()
            except BaseException:
                self.kill()
                raise

    def check_ports(self) -> None:
        """Raise :class:`PortInUseError` if a port given explicitly is taken: otherwise the server would load
        every model, then exit on the port while our readiness probe got its answer from the other server.
        :meth:`start` calls it first; call it earlier to fail before anything else."""
        named = ("gRPC", "HTTP", "metrics")
        ports = {what: port for what, port in zip(named, self._requested_ports, strict=True) if port is not None}
        taken = ports_in_use(self.host, ports)
        if taken:
            raise PortInUseError(taken, self.host)

    def _wait_ready(self, ready_models: tuple[str, ...], deadline: float) -> None:
        import tritonclient.grpc as grpcclient  # imported late: the module must stay importable without the client
        from tritonclient.utils import InferenceServerException

        tls = self.grpc_tls
        client = grpcclient.InferenceServerClient(
            self.grpc_url,
            ssl=tls is not None,
            root_certificates=str(tls.root_cert) if tls is not None else None,
            channel_args=[
                ("grpc.enable_http_proxy", 0),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ],
        )
        pending = list(dict.fromkeys(ready_models))
        live = False
        try:
            while True:
                assert self._proc is not None
                returncode = self._proc.poll()
                if returncode is not None:
                    raise self._error(f"tritonserver exited with code {returncode} during startup", returncode)
                if not live and self._listening():
                    # Only once this process says it listens: another server may answer on a port both were
                    # handed (ports are picked free, then bound by the server), and its answers are not ours;
                    # and the metrics service starts last, so a caller can scrape it once start() returns.
                    with contextlib.suppress(InferenceServerException):
                        live = bool(client.is_server_live(headers=self._headers(), client_timeout=2.0))
                if live:
                    for name in list(pending):
                        try:
                            ready = bool(client.is_model_ready(name, headers=self._headers(), client_timeout=2.0))
                        except InferenceServerException:
                            ready = False
                        if ready:
                            pending.remove(name)
                            continue
                        problem = self._model_problem(client, name)
                        if problem is not None:
                            raise self._error(f"model {name!r} cannot become ready: {problem}", None)
                    if not pending:
                        return
                if time.monotonic() > deadline:
                    what = f"models not ready: {pending}" if live else "server not live"
                    raise self._error(f"tritonserver did not become ready before the timeout ({what})", None)
                time.sleep(0.2)
        finally:
            client.close()

    def _listening(self) -> bool:
        """Whether this run's log says each of its services listens on its port: gRPC always, HTTP and metrics
        unless turned off in ``extra_args`` (logged after model loading in "none" mode, e.g.
        ``Started GRPCInferenceService at 127.0.0.1:8001``, ``Started Metrics Service at 127.0.0.1:8002``)."""
        services = {"GRPCInferenceService": self.grpc_port}
        if "--allow-http=false" not in self.extra_args:
            services["HTTPService"] = self.http_port
        if "--allow-metrics=false" not in self.extra_args:
            services["Metrics Service"] = self.metrics_port
        text = self.log_text()
        return all(re.search(rf'Started {name} at \S*:{port}"', text) for name, port in services.items())

    def _headers(self) -> dict[str, str] | None:
        """The key that restricted protocols ask for, sent with our own readiness calls."""
        return self.restricted.grpc_headers() if self.restricted is not None else None

    def _model_problem(self, client: Any, name: str) -> str | None:
        """Why a model that is not ready never will be (failed load, unknown name), or None if it still may."""
        from tritonclient.utils import InferenceServerException

        try:
            index = client.get_model_repository_index(as_json=True, headers=self._headers(), client_timeout=2.0)
        except InferenceServerException:
            return None
        entries = [e for e in index.get("models", []) if e.get("name") == name]
        if not entries:
            if self.model_control_mode == "poll":
                return None  # it may still be copied into the repository
            known = sorted({str(e.get("name")) for e in index.get("models", [])})
            return f"no such model in {self.repository} (the server knows {known})"
        for entry in entries:
            reason = str(entry.get("reason", ""))
            if entry.get("state") == "UNAVAILABLE" and reason.strip().lower() not in _BENIGN_UNAVAILABLE_REASONS:
                return f"load failed: {reason}"
        return None

    def _error(self, reason: str, returncode: int | None) -> TritonServerError:
        text = self.log_text()
        tail = "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])
        # The server's own error lines (E<date> ...), with their escaped newlines expanded.
        errors = [
            line.replace("\\n", "\n    ")
            for line in text.splitlines()
            if (re.match(r"^E\d{4} ", line) or line.startswith("error:"))
            and not any(noise in line for noise in _NOISE_ERRORS)
        ]
        parts = [
            reason,
            f"repository: {self.repository}",
            f"command: {shlex.join(self._command)}",
            f"server log: {self._log_path}",
        ]
        if errors:
            parts += ["--- errors reported by tritonserver ---", *errors[-20:]]
        parts += [f"--- last {_LOG_TAIL_LINES} lines of the server log ---", tail]
        return TritonServerError("\n".join(parts), log_tail=text, returncode=returncode)

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM the server's process group, wait up to ``timeout_s``, then SIGKILL it; return the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group (simulates a crash); return once it is gone, with the exit code."""
        proc = self._proc
        if proc is None:
            return None
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_group_gone(proc.pid, timeout_s=10)
        return proc.returncode

    def close(self) -> None:
        """Stop the server and delete its private directory (backend copy and temp log)."""
        self.stop()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            if self._user_log_file is None:
                self._log_path = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"TritonServer({str(self.repository)!r}, grpc={self.grpc_url}, {state})"


def iter_models(repository: Path) -> list[str]:
    """Names of the model directories in a repository (a ``config.pbtxt`` or a numeric version folder), sorted."""
    if not repository.is_dir():
        return []
    return sorted(
        child.name
        for child in repository.iterdir()
        if child.is_dir()
        and not child.name.startswith(".")
        and ((child / "config.pbtxt").is_file() or any(v.is_dir() and v.name.isdigit() for v in child.iterdir()))
    )
