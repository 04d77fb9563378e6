"""Command line for the ``astro`` ensemble: ``python -m client score|health``.

    python -m client score request.json --url 127.0.0.1:8001
    echo '{"history": {...}, "candidates": [...], "scenario": 0, "timestamp": 1700000000}' | python -m client score
    python -m client health --url 10.0.0.5:8001,10.0.0.6:8001
    python -m client score request.json --url triton-headless:8001 --lb affinity --deadline 2
    python -m client health --url triton:8001 --ssl --root-certificates ca.pem

``score`` reads one request object (or a list of them) as JSON::

    {"history": {"item_ids": [...], "behaviors": [...], "scenarios": [...], "timestamps": [...]},
     "candidates": [...], "scenario": 0, "timestamp": 1700000000}

and optionally ``"user_id": "..."`` (a caller's stable id: calls are then routed by it instead of
by a hash of the history). Integers only (no 1.7e9), no other keys; a new user has four empty
history lists. Behaviour and
scenario ids index the vocabularies the server publishes (``health`` prints them), timestamps are
unix seconds; ids outside the vocabularies, other timestamps and history items with id 0 (the
padding id) are refused unless the matching ``--allow-*`` flag is given. Prints
``{"model", "candidates", "scores": {task_name: [...]}}`` (a list for a list).

With several replicas (comma-separated addresses, or a DNS name resolving to several) each call goes
to the replica its routing key picks (``--lb affinity``, the default there) or round-robin
(``--lb round_robin``). A server that refuses for lack of room is tried again on another replica
within ``--deadline``; if every try is refused, the error says the server is overloaded and which
limit it reached.

``health`` prints each server's status and what it serves (model, preset, limits, vocabularies,
blocks, tasks); with several addresses, one report per address.
Exit status: 0 done / ready, 1 server error / not ready, 2 bad request or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.astro_client import AstroClient
from client.errors import ServerError
from client.flows import DEFAULT_URL, LB_POLICIES
from client.request_lines import is_json_lines, read_request_lines
from client.routing import DEFAULT_LOAD_FACTOR
from client.served_provenance import served_provenance
from client.validation import I64, Allow, RequestError, ScoreRequest, request_from_json
from contract.program import program_name
from contract.tensors import ENSEMBLE

EXIT_OK, EXIT_SERVER, EXIT_USAGE = 0, 1, 2


def parse_header(text: str) -> tuple[str, str]:
    """``"K=V"`` -> ``("k", "V")``; gRPC metadata keys are lowercase."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"header {text!r} must look like KEY=VALUE")
    return key.strip().lower(), value


def scores_to_json(
    model: str, candidates: Sequence[int] | I64, scores: np.ndarray[Any, Any], tasks: Sequence[str]
) -> dict[str, Any]:
    """One request's scores ``[N, n_tasks]`` as ``{model, candidates, scores: {task: [N floats]}}``."""
    return {
        "model": model,
        "candidates": [int(c) for c in candidates],
        "scores": {t: [float(x) for x in scores[:, i]] for i, t in enumerate(tasks)},
    }


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"Triton gRPC endpoint host:port, several comma-separated, or a DNS name that resolves to several "
        f"replicas (a headless Service) (default {DEFAULT_URL})",
    )
    conn.add_argument(
        "--lb",
        choices=LB_POLICIES,
        default=None,
        help="affinity: each call to the replica its routing key (a hash of the user's history, or user_id) picks, "
        "failing over to the key's next replica; round_robin: spread evenly "
        "(default: affinity when the url names several replicas)",
    )
    conn.add_argument(
        "--load-factor",
        type=float,
        default=DEFAULT_LOAD_FACTOR,
        help="affinity's load bound: a replica holding more than this times the mean calls in flight passes "
        f"new keys to their next replica (default {DEFAULT_LOAD_FACTOR})",
    )
    conn.add_argument("--model", default=ENSEMBLE, help=f"ensemble model name (default {ENSEMBLE})")
    conn.add_argument(
        "--deadline",
        "--timeout",
        dest="deadline",
        type=float,
        default=10.0,
        help="deadline of the whole score in seconds, retries and failovers included; every call carries what is "
        "left of it to the server (as the gRPC deadline, and split over the ensemble's queues as Triton's request "
        "timeout) (default 10)",
    )
    conn.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra attempts after UNAVAILABLE (gRPC's retry policy, at most 4) or a model still loading (default 2)",
    )
    conn.add_argument(
        "--backoff", type=float, default=0.05, help="first retry delay in seconds, doubled per retry (default 0.05)"
    )
    conn.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once while no server is reachable, instead of waiting for one up to --deadline",
    )
    conn.add_argument(
        "--header",
        action="append",
        type=parse_header,
        default=[],
        metavar="KEY=VALUE",
        help="gRPC metadata sent with every call; repeat for several",
    )
    conn.add_argument(
        "--traceparent",
        default=None,
        metavar="00-TRACEID-PARENTID-FLAGS",
        help="W3C trace context of the caller: every call joins this trace (a fresh parent id each); "
        "default: each call starts a trace of its own",
    )
    tls = common.add_argument_group("TLS")
    tls.add_argument("--ssl", action="store_true", help="use a TLS channel (implied by any certificate flag)")
    tls.add_argument("--root-certificates", type=Path, help="PEM file of root certificates to trust")
    tls.add_argument("--private-key", type=Path, help="PEM file of the client's private key (mutual TLS)")
    tls.add_argument("--certificate-chain", type=Path, help="PEM file of the client's certificate chain (mutual TLS)")

    parser = argparse.ArgumentParser(
        prog=program_name("client"), description="Score candidates with, or check the health of, the astro ensemble."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser(
        "score",
        parents=[common],
        help="score one request (or a JSON list of them)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("input", nargs="?", default="-", help="request JSON file, or - for stdin (default -)")
    score.add_argument("--indent", type=int, default=None, help="indent the printed JSON by this many spaces")
    allow = score.add_argument_group("likely mistakes, refused unless allowed")
    allow.add_argument(
        "--allow-unknown-ids",
        action="store_true",
        help="send behaviour/scenario ids outside the served vocabularies (the model reads them as 'unknown')",
    )
    allow.add_argument(
        "--allow-any-timestamp",
        action="store_true",
        help="send timestamps outside unix seconds 1970..2100 (milliseconds, negative ones)",
    )
    allow.add_argument(
        "--allow-padding-items",
        action="store_true",
        help="send history events with item id 0, the padding id (they are dropped from the blocks)",
    )
    sub.add_parser("health", parents=[common], help="print server and model status; exit 1 unless ready")
    return parser


def make_client(args: argparse.Namespace, url: str | None = None) -> AstroClient:
    certs = (args.root_certificates, args.private_key, args.certificate_chain)
    return AstroClient(
        args.url if url is None else url,
        args.model,
        timeout_s=args.deadline,
        lb=args.lb,
        load_factor=args.load_factor,
        retries=args.retries,
        backoff_s=args.backoff,
        wait_for_ready=not args.no_wait,
        headers=dict(args.header),
        traceparent=args.traceparent,
        allow=Allow(
            unknown_ids=getattr(args, "allow_unknown_ids", False),
            any_timestamp=getattr(args, "allow_any_timestamp", False),
            padding_items=getattr(args, "allow_padding_items", False),
        ),
        ssl=bool(args.ssl or any(c is not None for c in certs)),
        root_certificates=args.root_certificates,
        private_key=args.private_key,
        certificate_chain=args.certificate_chain,
    )


def run_score(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    if is_json_lines(text):  # one request per line in, one result per line out, in order
        return run_score_lines(args, [r for _, r in read_request_lines(text, args.input)])
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError("input", f"is not valid JSON: {e}") from e
    many = isinstance(payload, list)
    requests = (
        [request_from_json(r, f"requests[{i}]") for i, r in enumerate(payload)]
        if many
        else [request_from_json(payload)]
    )
    with make_client(args) as client:
        say_if_waiting(client, args)
        if many:
            scores = client.score_batch(requests)
        else:  # error messages then name plain fields ("candidates"), not "requests[0].candidates"
            (r,) = requests
            scores = [client.score(r.history, r.candidates, r.scenario, r.timestamp, user_id=r.user_id)]
        tasks = client.get_spec().task_names
    out = [scores_to_json(args.model, r.candidates, s, tasks) for r, s in zip(requests, scores, strict=True)]
    print(json.dumps(out if many else out[0], indent=args.indent))
    return EXIT_OK


def say_if_waiting(client: AstroClient, args: argparse.Namespace) -> None:
    """One line on stderr when no server answers yet: the calls that follow wait for one up to --deadline."""
    if not args.no_wait and not client.health()["server_live"]:
        print(
            f"waiting for the server at {args.url} (up to {args.deadline:g} s; --no-wait fails at once)",
            file=sys.stderr,
            flush=True,
        )


def run_score_lines(args: argparse.Namespace, requests: list[ScoreRequest]) -> int:
    with make_client(args) as client:
        say_if_waiting(client, args)
        scores = client.score_batch(requests)
        tasks = client.get_spec().task_names
    for r, s in zip(requests, scores, strict=True):
        print(json.dumps(scores_to_json(args.model, r.candidates, s, tasks)))
    return EXIT_OK


def run_health(args: argparse.Namespace) -> int:
    """One report per address: with several, each server is asked on its own (the balanced
    channel would ask whichever replica it picks)."""
    with make_client(args) as client:
        addresses = client.addresses
        reports = [client.health()] if len(addresses) == 1 else []
    for address in addresses if not reports else ():
        with make_client(args, address) as one:
            reports.append(one.health())
    for report in reports:  # which export answers: checkpoint sha256, export time, toolchain, container
        if report["model_ready"]:
            report["provenance"] = served_provenance(
                report["url"], args.model, timeout_s=args.deadline, headers=dict(args.header),
                ssl=bool(args.ssl or args.root_certificates or args.private_key or args.certificate_chain),
                root_certificates=args.root_certificates, private_key=args.private_key,
                certificate_chain=args.certificate_chain,
            )  # fmt: skip
    ready = all(r["ready"] for r in reports)
    out = reports[0] if len(reports) == 1 else {"url": args.url, "ready": ready, "replicas": reports}
    print(json.dumps(out, indent=2))
    return EXIT_OK if ready else EXIT_SERVER


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = run_score(args) if args.command == "score" else run_health(args)
        sys.stdout.flush()  # a reader gone early (`| head`) raises here, inside the try, not at exit
        return status
    except BrokenPipeError:
        # as the Python docs recommend (signal module, "Note on SIGPIPE"): point stdout at devnull so the flush at
        # exit stays quiet. The work is done; the reader chose to stop reading, so this is no failure: exit 0.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (RequestError, ValueError, OSError) as e:  # bad request, bad flag value, unreadable file
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
