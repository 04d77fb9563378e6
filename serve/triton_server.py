"""Launch the real Triton Inference Server of the ``nvidia-pytriton`` wheel on a model repository:
:class:`TritonServer`, one ``tritonserver`` process from start to stop.

The wheel's pieces and the environment they need come from ``serve/triton_wheel.py``, the process group and
its log from ``serve/server_process.py``, free and taken ports from ``serve/ports.py``. The launch adds:

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
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from serve import server_process
from serve.ports import free_ports, host_port, ports_in_use
from serve.server_errors import PortInUseError, TritonServerError
from serve.server_options import MODEL_CONTROL_MODES, GrpcTls, Restriction, Tracing
from serve.triton_wheel import TritonInstall, find_tritonserver

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
    'initialized"): the models run on the CPU'
)


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


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
        return host_port(self.host, self.grpc_port)

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP/REST endpoint (for ``tritonclient.http.InferenceServerClient``)."""
        return host_port(self.host, self.http_port)

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics page, ``http://host:port/metrics``."""
        return f"http://{host_port(self.host, self.metrics_port)}/metrics"

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
        return server_process.read_log(self._log_path, self._log_offset)

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
        header = [f"# astro-serving: {shlex.join(self._command)}"]
        if not _nvidia_driver_present():
            header.append(_CPU_HOST_NOTE)
        self._proc, self._log_offset = server_process.spawn(
            self._command, env=install.environment(), cwd=self._workdir, log_path=self._log_path, header=header
        )
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, server_process.reap, self._proc, self._workdir)

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
        return server_process.stop(self._proc, timeout_s) if self._proc is not None else None

    def kill(self) -> int | None:
        """SIGKILL the whole process group (simulates a crash); return once it is gone, with the exit code."""
        return server_process.kill(self._proc) if self._proc is not None else None

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
