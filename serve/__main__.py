"""``python -m serve``: run the Triton server from the ``nvidia-pytriton`` wheel on the model repository.

Starts ``tritonserver``, waits until the ensemble (``astro`` by default) is ready, prints the gRPC, HTTP and
metrics addresses, then serves until Ctrl-C or SIGTERM and stops the server cleanly. Extra ``tritonserver``
flags go after ``--``, e.g. ``python -m serve -- --repository-poll-secs=5``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from export.repository_check import load_config
from serve.triton_server import (
    MODEL_CONTROL_MODES,
    GrpcTls,
    Restriction,
    TritonNotFoundError,
    TritonServer,
    TritonServerError,
    iter_models,
)

DEFAULT_WAIT_MODEL = "astro"


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
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
        help="file that receives the server's output (default: a temporary file, printed at start)",
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
    parser.add_argument("triton_args", nargs="*", help="extra flags passed to tritonserver unchanged (after '--')")
    return parser


def not_servable_here(repository: Path, models: Sequence[str]) -> list[str]:
    """Models of the repository that need another backend than Python (tensorrt_plan, onnxruntime_onnx)."""
    paths = {m: repository / m / "config.pbtxt" for m in models}
    configs = {m: load_config(p) for m, p in paths.items() if p.is_file()}
    return [f"{m} ({c.platform})" for m, c in configs.items() if c.platform not in ("", "ensemble")]


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

    # SIGTERM behaves like Ctrl-C, so the server is stopped cleanly in both cases, during startup too.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    server = TritonServer(
        repository,
        host=args.host,
        grpc_port=args.grpc_port or None,
        http_port=args.http_port or None,
        metrics_port=args.metrics_port or None,
        model_control_mode=args.model_control_mode,
        load_models=load_models,
        extra_args=args.triton_args,
        log_file=args.log_file,
        log_verbose=args.log_verbose,
        grpc_tls=tls,
        restricted=restricted,
    )
    try:
        with server:
            print(f"starting tritonserver on {repository.resolve()} (models: {', '.join(models)}) ...", flush=True)
            server.start(ready_models=wait_models, timeout_s=args.startup_timeout)
            print(
                f"Triton is ready (pid {server.pid}); models ready: {', '.join(wait_models) or '-'}\n"
                f"  gRPC:    {server.grpc_url}\n"
                f"  HTTP:    http://{server.http_url}\n"
                f"  metrics: {server.metrics_url}\n"
                f"  log:     {server.log_path}\n"
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
        print("stopped tritonserver", flush=True)
        return 0
    except TritonNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
