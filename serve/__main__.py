"""``python -m serve``: run the Triton server from the ``nvidia-pytriton`` wheel on the model repository.

Starts ``tritonserver``, waits until the ensemble (``astro`` by default) is ready, prints the gRPC, HTTP and
metrics addresses, then serves until Ctrl-C or SIGTERM and stops the server cleanly. Extra ``tritonserver``
flags go after ``--``, e.g. ``python -m serve -- --repository-poll-secs=5``.

Before starting it warns when the repository is stale (its ``provenance.json`` names a checkpoint that has
changed since the export) and refuses ports that are already taken, in one line. The server's log goes to a
file that is kept after the stop. Run by ``make``, it also stops when only the ``make`` process gets SIGINT
(GNU make does not pass SIGINT on to the command it runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from contract.model_config import read_model_config
from contract.program import program_name
from contract.provenance import ProvenanceError, read_provenance, stale_reason
from contract.tensors import USER_ENCODER
from serve.response_cache import DEFAULT_USERS, cache_sizing
from serve.server_errors import PortInUseError, TritonNotFoundError, TritonServerError
from serve.server_options import (
    DEFAULT_TRACE_COLLECTOR,
    DEFAULT_TRACE_RATE,
    MODEL_CONTROL_MODES,
    TRACE_MODES,
    GrpcTls,
    Restriction,
    Tracing,
)
from serve.triton_server import TritonServer, iter_models

DEFAULT_WAIT_MODEL = "astro"
# GNU make waits for its recipe on these and passes none of them on (it does pass SIGTERM)
_SIGNALS_MAKE_KEEPS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
PORTS_HINT = (
    'pick other ports: make serve SERVE_ARGS="--grpc-port 9001 --http-port 9000 --metrics-port 9002" '
    "(python -m serve takes the same flags; 0 = any free port)"
)
CPU_LOG_NOTE = "; its CUDA error lines are harmless on this host without an NVIDIA driver"


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("serve"),
        description=(
            "Serve the ASTRO model repository with the Triton Inference Server bundled in the nvidia-pytriton "
            "wheel (no container needed). Blocks until Ctrl-C or SIGTERM."
        ),
        epilog="Extra tritonserver flags go after '--', e.g.: python -m serve -- --repository-poll-secs=5",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="model repository directory, as written by `make export` (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address all three endpoints bind to (default: %(default)s)"
    )
    parser.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port; 0 = any free port (default: 8001)")
    parser.add_argument("--http-port", type=_port, default=8000, help="HTTP port; 0 = any free port (default: 8000)")
    parser.add_argument(
        "--metrics-port", type=_port, default=8002, help="Prometheus metrics port; 0 = any free port (default: 8002)"
    )
    parser.add_argument(
        "--model-control-mode",
        choices=MODEL_CONTROL_MODES,
        default="none",
        help="none: load every model at start; poll: also reload on repository changes; "
        "explicit: load only --load-model (default: %(default)s)",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        default=None,
        metavar="NAME",
        help="with --model-control-mode explicit: model to load at start (repeatable; default: the --wait-model ones)",
    )
    parser.add_argument(
        "--wait-model",
        action="append",
        default=None,
        metavar="NAME",
        help=f"model that must be ready before the server is announced (repeatable; default: {DEFAULT_WAIT_MODEL})",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the server and models to become ready (default: %(default)s)",
    )
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver verbose log level, 0 = off")
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="file that receives the server's output, kept after the stop (default: a new file in the temporary "
        "directory, printed at start and at stop)",
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--restrict",
        default=None,
        metavar="PROTOCOLS:KEY=VALUE",
        help="refuse PROTOCOLS (comma-separated, e.g. model-repository,model-config) unless the call carries "
        "header KEY=VALUE (gRPC clients send it as triton-grpc-protocol-KEY)",
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-users",
        type=_positive,
        default=DEFAULT_USERS,
        metavar="N",
        help="size Triton's local response cache (user_encoder's keys/values) for N users at the longest history: "
        "N × (2·L·H·S_max·dh·dtype bytes + S_max), read from the repository (default: %(default)s)",
    )
    cache.add_argument(
        "--cache-size",
        type=_positive,
        default=None,
        metavar="BYTES",
        help="response cache size in bytes, instead of --cache-users",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="start without a response cache (every request runs the encoder)"
    )
    trace = parser.add_argument_group(
        "request tracing (Triton's --trace-config)",
        "off unless --trace-mode is given. opentelemetry mode traces every request that carries a W3C traceparent "
        "header (the project's client sends one with every call), whatever --trace-rate says",
    )
    trace.add_argument(
        "--trace-mode",
        choices=TRACE_MODES,
        default=None,
        help="triton: timestamps of each traced request as JSON in --trace-file; opentelemetry: spans exported "
        "over OTLP/HTTP to --trace-collector",
    )
    trace.add_argument(
        "--trace-rate",
        type=_non_negative,
        default=None,
        metavar="N",
        help=f"trace 1 request in N (default: {DEFAULT_TRACE_RATE}, every request; 0: only those with a traceparent)",
    )
    trace.add_argument(
        "--trace-file",
        type=Path,
        default=None,
        help="triton mode: the JSON trace file, written when the server stops (default: beside the log, "
        "<log>.trace.json)",
    )
    trace.add_argument(
        "--trace-collector",
        default=None,
        metavar="URL",
        help=f"opentelemetry mode: the collector's OTLP/HTTP traces endpoint (default: {DEFAULT_TRACE_COLLECTOR})",
    )
    parser.add_argument("triton_args", nargs="*", help="extra flags passed to tritonserver unchanged (after '--')")
    return parser


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def tracing_setting(args: argparse.Namespace, log_file: Path) -> Tracing | None:
    """The --trace-* options as a :class:`Tracing`, or None when off; ValueError names a misplaced option."""
    if args.trace_mode is None:
        options = {"--trace-rate": args.trace_rate, "--trace-file": args.trace_file}
        options["--trace-collector"] = args.trace_collector
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} needs --trace-mode ({' or '.join(TRACE_MODES)})")
        return None
    rate = args.trace_rate if args.trace_rate is not None else DEFAULT_TRACE_RATE
    if args.trace_mode == "triton":
        if args.trace_collector is not None:
            raise ValueError("--trace-collector is for --trace-mode opentelemetry (triton mode writes --trace-file)")
        file = args.trace_file if args.trace_file is not None else log_file.with_name(log_file.name + ".trace.json")
        return Tracing("triton", rate=rate, file=file.resolve())
    if args.trace_file is not None:
        raise ValueError("--trace-file is for --trace-mode triton (opentelemetry mode exports to --trace-collector)")
    return Tracing("opentelemetry", rate=rate, collector=args.trace_collector or DEFAULT_TRACE_COLLECTOR)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def response_cache_size(args: argparse.Namespace, repository: Path) -> tuple[int | None, str]:
    """(cache size in bytes or None for no cache, the line that says so at start)."""
    if args.no_cache:
        return None, "response cache: off (--no-cache): every request runs user_encoder"
    if any(a.startswith("--cache-config") for a in args.triton_args):
        return None, "response cache: as given after '--' (--cache-config)"
    if args.cache_size is not None:
        return args.cache_size, f"response cache: local, {args.cache_size:,} bytes (--cache-size)"
    if not (repository / USER_ENCODER / "config.pbtxt").is_file():
        return None, f"response cache: off (no {USER_ENCODER} in the repository to size it for; see --cache-size)"
    sizing = cache_sizing(repository, args.cache_users)
    return sizing.size, f"response cache: local, {sizing.describe()}; --cache-users/--cache-size/--no-cache change it"


def admission_line(repository: Path, models: Sequence[str]) -> str:
    """What each composing model's queue policy admits (contract/admission.py, as the configs say), one line."""
    parts = []
    for model in models:
        path = repository / model / "config.pbtxt"
        config = read_model_config(path) if path.is_file() else None
        if config is None or config.platform == "ensemble" or not config.HasField("dynamic_batching"):
            continue
        policy = config.dynamic_batching.default_queue_policy
        if not policy.max_queue_size:
            parts.append(f"{model} queue UNBOUNDED (re-export with `python -m export` to bound it)")
            continue
        wait = f"{policy.default_timeout_microseconds / 1e6:g} s" if policy.default_timeout_microseconds else "no limit"
        override = " or the caller's shorter timeout" if policy.allow_timeout_override else ""
        parts.append(f"{model} <= {policy.max_queue_size} queued, each <= {wait}{override}")
    if not parts:
        return "admission: no composing model has a queue"
    refusal = "; past a bound: UNAVAILABLE at once, retryable" if any("<=" in p for p in parts) else ""
    return "admission: " + "; ".join(parts) + refusal


def not_servable_here(repository: Path, models: Sequence[str]) -> list[str]:
    """Models of the repository that need another backend than Python (tensorrt_plan, onnxruntime_onnx)."""
    paths = {m: repository / m / "config.pbtxt" for m in models}
    configs = {m: read_model_config(p) for m, p in paths.items() if p.is_file()}
    return [f"{m} ({c.platform})" for m, c in configs.items() if c.platform not in ("", "ensemble")]


def _caught_signals(pid: int) -> int | None:
    """The mask of signals process ``pid`` has a handler for (``SigCgt`` in /proc), or None if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return None


def watch_make_parent(poll_s: float = 0.2) -> threading.Thread | None:
    """When run by GNU make, stop as on Ctrl-C once make gets SIGINT/SIGHUP/SIGQUIT, or goes away.

    make passes SIGTERM on to the command it runs, but not these: it expects the terminal to have sent them
    to the whole foreground process group, and waits for its command. So ``kill -INT <make's pid>`` alone
    would leave the server running. make's handler for such a signal first resets it to the default, which
    /proc shows: that is what this thread watches for. Returns the thread, or None when the parent is not make.
    """
    ppid = os.getppid()
    try:
        parent = Path(f"/proc/{ppid}/comm").read_text().strip()
    except OSError:
        return None
    caught = _caught_signals(ppid)
    if parent not in ("make", "gmake") or caught is None:
        return None
    bits = [1 << (s - 1) for s in _SIGNALS_MAKE_KEEPS if caught & (1 << (s - 1))]

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            now = _caught_signals(ppid) if os.getppid() == ppid else None
            if now is None or any(not now & bit for bit in bits):
                os.kill(os.getpid(), signal.SIGINT)  # _interrupt: unwind, which stops the server
                return

    thread = threading.Thread(target=watch, name="watch-make", daemon=True)
    thread.start()
    return thread


def default_log_file() -> Path:
    """A new file in the temporary directory, named by time and pid: it outlives the server."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"astro-tritonserver-{stamp}-{os.getpid()}.log"


def cpu_only_host() -> bool:
    return not Path("/proc/driver/nvidia/version").exists()


def _interrupt(signum: int, frame: object) -> None:
    """First Ctrl-C/SIGTERM: unwind (the ``with`` block stops the server); later ones are ignored meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repository: Path = args.repository
    models = iter_models(repository)
    if not models:
        what = "does not exist" if not repository.exists() else "contains no models"
        print(
            f"error: model repository '{repository}' {what}.\n"
            "Run `make export` first to export the ASTRO model and write the Triton model repository.",
            file=sys.stderr,
        )
        return 2
    foreign = not_servable_here(repository, models)
    if foreign:
        print(
            f"error: {', '.join(foreign)} in '{repository}' need a Triton backend the nvidia-pytriton server lacks "
            "(it has the Python backend only). Serve this repository in the NGC container (README: 'Model "
            "repository targets'), or re-export for this server: python -m export --target python",
            file=sys.stderr,
        )
        return 2
    wait_models: list[str] = args.wait_model if args.wait_model is not None else [DEFAULT_WAIT_MODEL]
    wait_models = [m for m in wait_models if m]
    missing = [m for m in wait_models if m not in models]
    if missing:
        print(
            f"error: {missing} not found in '{repository}' (it has {models}). "
            "Run `make export` to regenerate the repository, or pick another --wait-model.",
            file=sys.stderr,
        )
        return 2
    load_models: list[str] = []
    if args.model_control_mode == "explicit":
        load_models = args.load_model if args.load_model else wait_models
    elif args.load_model:
        print("error: --load-model needs --model-control-mode explicit", file=sys.stderr)
        return 2

    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    tls = GrpcTls(args.tls_cert, args.tls_key, args.tls_cert) if args.tls_cert is not None else None
    restricted = None
    if args.restrict is not None:
        protocols, _, key_value = args.restrict.partition(":")
        key, _, value = key_value.partition("=")
        if not (protocols and key and value):
            print(f"error: --restrict {args.restrict!r} is not PROTOCOLS:KEY=VALUE", file=sys.stderr)
            return 2
        restricted = Restriction(tuple(protocols.split(",")), key, value)

    try:
        cache_size, cache_line = response_cache_size(args, repository)
    except ValueError as exc:  # a repository without the published serving parameters
        print(f"error: cannot size the response cache: {exc}; pass --cache-size or --no-cache", file=sys.stderr)
        return 2

    provenance = None
    if DEFAULT_WAIT_MODEL in models:  # an ASTRO repository: was it exported from the checkpoint as it is now?
        stale = stale_reason(repository)
        if stale is not None:
            print(f"warning: {stale}", file=sys.stderr, flush=True)
        try:
            provenance = read_provenance(repository)
        except ProvenanceError:
            provenance = None
    log_file: Path = args.log_file if args.log_file is not None else default_log_file()
    try:
        tracing = tracing_setting(args, log_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # SIGTERM behaves like Ctrl-C, so the server is stopped cleanly in both cases, during startup too.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    watch_make_parent()
    server = TritonServer(
        repository,
        host=args.host,
        grpc_port=args.grpc_port or None,
        http_port=args.http_port or None,
        metrics_port=args.metrics_port or None,
        model_control_mode=args.model_control_mode,
        load_models=load_models,
        extra_args=args.triton_args,
        log_file=log_file,
        log_verbose=args.log_verbose,
        grpc_tls=tls,
        restricted=restricted,
        cache_size=cache_size,
        tracing=tracing,
    )
    try:
        server.check_ports()  # before anything is printed or loaded: one line if a port is taken
        with server:
            print(
                f"starting tritonserver on {repository.resolve()} (models: {', '.join(models)}); log: {log_file} ...",
                flush=True,
            )
            print(cache_line, flush=True)
            print(admission_line(repository, models), flush=True)
            if tracing is not None:
                print(tracing.describe(), flush=True)
            server.start(ready_models=wait_models, timeout_s=args.startup_timeout)
            print(
                f"Triton is ready (pid {server.pid}); models ready: {', '.join(wait_models) or '-'}\n"
                f"  gRPC:    {server.grpc_url}\n"
                f"  HTTP:    http://{server.http_url}\n"
                f"  metrics: {server.metrics_url}\n"
                + (f"  model:   {provenance.describe()}\n" if provenance is not None else "")
                + f"  log:     {log_file} (kept after the stop{CPU_LOG_NOTE if cpu_only_host() else ''})\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            while server.is_running():
                time.sleep(0.5)
            print(
                f"error: tritonserver exited unexpectedly (code {server.stop()}); last log lines:\n"
                + "\n".join(server.log_text().splitlines()[-40:]),
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        print(f"stopped tritonserver; its log: {log_file}", flush=True)
        return 0
    except PortInUseError as exc:
        print(f"error: {exc.what()}; {PORTS_HINT}", file=sys.stderr)
        return 2
    except TritonNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
