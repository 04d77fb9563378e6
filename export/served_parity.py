"""``python -m export.served_parity``: does a running server score as PyTorch does? QA's one command.

    python -m export.served_parity                                  # 8 fresh random requests to 127.0.0.1:8001
    python -m export.served_parity --url host:8001 --requests reqs.jsonl --random 0
    make parity PARITY_ARGS="--url host:8001 --requests reqs.jsonl"

Each request goes through the project's client (``AstroClient``: the validation, block cutting and
chunking production callers get) to the ``astro`` ensemble, and the same request is scored by PyTorch
per-pair on the checkpoint (every candidate by its own full pass over the history: the reference the
served split graphs must match). One table row per output follows: how many values, max and mean
absolute difference, the tolerance and whether it passes; then the top-10 overlap of each request's
ranking, where only near-ties (reference scores within the tolerance's ``rank_tie``) may swap. The
tolerances are the export's (``export.parity.TOLERANCES``), picked by the cache dtype the server publishes.

``--requests`` takes JSON lines, one request per line in the client's format (``python -m client score``)::

    {"history": {"item_ids": [11, 12], "behaviors": [0, 1], "scenarios": [0, 0],
     "timestamps": [1699990000, 1699995000]}, "candidates": [12, 99, 4242], "scenario": 0, "timestamp": 1700000000}

Random requests are drawn from ``--seed`` (fresh and printed unless given, so a failure can be replayed):
histories of up to twice the longest block (some users with none), ids inside the vocabularies.

Exit status: 0 every row passes, 1 a row fails, 2 bad usage or request, no server, or the server serves
another preset or another checkpoint than ``--checkpoint`` (the ensemble publishes its checkpoint's
sha256: a checkpoint of the right shape but other weights is refused in one line naming both hashes).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from client.astro_client import AstroClient
from client.errors import ServerError
from client.flows import DEFAULT_URL
from client.request_lines import read_request_lines
from client.validation import RequestError, ScoreRequest
from contract.config import AstroConfig
from contract.program import program_name
from contract.provenance import checkpoint_digest
from contract.request_batch import RequestBatch
from contract.tensors import ENSEMBLE
from export.parity import TOLERANCES, Tolerance, torch_per_pair
from export.provenance import display_path
from export.ranking import TOP_K, compare_topk
from model.astro import AstroModel
from model.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from model.random_inputs import NOW, random_history

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Labelled:
    """A request and where it came from (``reqs.jsonl:3``, ``random #2``)."""

    source: str
    request: ScoreRequest


@dataclass(frozen=True)
class Row:
    output: str
    values: int
    max_diff: float
    mean_diff: float | None
    tolerance: str
    passed: bool


def read_requests(path: Path) -> list[Labelled]:
    """One request object per non-empty line; ``-`` reads stdin. Errors name the file and line."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [Labelled(where, request) for where, request in read_request_lines(text, str(path))]


def random_requests(cfg: AstroConfig, rng: np.random.Generator, count: int, max_candidates: int) -> list[Labelled]:
    """``count`` requests in the client's format: ragged flat histories (about one user in six has none),
    behaviour and scenario ids inside the vocabularies, timestamps in seconds before the request time.
    The first request has ``max_candidates`` candidates, so rankings are compared at least once."""
    out = []
    longest = 2 * max(b.max_len for b in cfg.blocks)
    for i in range(count):
        n_events = 0 if rng.random() < 1 / 6 else int(rng.integers(1, longest + 1))
        history = random_history(rng, n_events, cfg)
        n = max_candidates if i == 0 else int(rng.integers(1, max_candidates + 1))
        candidates = rng.integers(1, 10**9, n).astype(np.int64)
        scenario = int(rng.integers(0, cfg.n_scenarios))
        out.append(Labelled(f"random #{i}", ScoreRequest(history, candidates, scenario, NOW)))
    return out


def reference_scores(model: AstroModel, request: ScoreRequest) -> F32:
    """PyTorch per-pair probabilities ``[N, T]``, the request cut into blocks by the client's own helper."""
    req = RequestBatch.from_history(
        request.history, np.asarray(request.candidates), int(request.scenario), int(request.timestamp), model.cfg
    )
    scores: F32 = torch_per_pair(model, req)[0]
    return scores


def compare(
    served: Sequence[F32], reference: Sequence[F32], labels: Sequence[str], tasks: Sequence[str], tol: Tolerance
) -> tuple[list[Row], list[str]]:
    """Table rows (one per task, then the top-k overlap) and the problems found, worst first."""
    problems: list[str] = []
    diffs: dict[str, list[npt.NDArray[np.float64]]] = {t: [] for t in tasks}
    worst: tuple[float, str] = (-1.0, "")
    overlaps = []
    intruders: list[str] = []  # near-ties excused; reported after the value rows
    for got, ref, label in zip(served, reference, labels, strict=True):
        if got.shape != ref.shape:
            problems.append(f"{label}: served scores have shape {list(got.shape)}, PyTorch's {list(ref.shape)}")
            continue
        if not np.isfinite(got).all():
            problems.append(f"{label}: the server returned non-finite scores")
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        for i, t in enumerate(tasks):
            diffs[t].append(d[:, i])
        if d.size:
            c, k = (int(x) for x in np.unravel_index(int(np.argmax(np.where(np.isnan(d), np.inf, d))), d.shape))
            if d[c, k] > worst[0]:
                worst = (
                    float(d[c, k]),
                    f"{label}, candidate {c}, task {tasks[k]}: served {got[c, k]:.6f} vs PyTorch {ref[c, k]:.6f}",
                )
        if got.shape[0] > TOP_K:
            topk = compare_topk(ref[None], got[None], tol.rank_tie)
            overlaps.append(topk.overlap)
            intruders += [f"{label}, top-{TOP_K}: {i.describe(tuple(tasks))}" for i in topk.intruders[:3]]
    rows = []
    for t in tasks:
        all_d = np.concatenate(diffs[t]) if diffs[t] else np.zeros(0)
        max_d = float(np.nanmax(all_d)) if all_d.size else 0.0
        if all_d.size and np.isnan(all_d).any():
            max_d = float("nan")
        mean_d = float(np.mean(all_d)) if all_d.size else 0.0
        passed = bool(all_d.size) and max_d <= tol.atol  # NaN compares False: fails
        rows.append(Row(f"scores[{t}]", int(all_d.size), max_d, mean_d, f"<= {tol.atol:.0e}", passed))
        if not passed:
            problems.append(f"scores[{t}]: max |diff| {max_d:.3e} > {tol.atol:.0e}")
    if overlaps:
        low = min(overlaps)
        rows.append(
            Row(f"top-{TOP_K} overlap (min)", len(overlaps), low, None, f"1.0, ties {tol.rank_tie:.0e}", low == 1.0)
        )
    problems += intruders
    if problems and worst[0] >= 0:
        problems.append(f"largest difference: {worst[1]}")
    return rows, problems


def format_table(rows: Sequence[Row]) -> str:
    head = ("output", "values", "max |diff|", "mean |diff|", "tolerance", "pass")
    body = [
        (
            r.output,
            str(r.values),
            f"{r.max_diff:.3f}" if r.output.startswith("top-") else f"{r.max_diff:.2e}",
            "-" if r.mean_diff is None else f"{r.mean_diff:.2e}",
            r.tolerance,
            "yes" if r.passed else "NO",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(x) for x in (head, *body)]
    return "\n".join(lines)


def served_parameters(url: str, timeout_s: float) -> dict[str, str]:
    """The ensemble config's ``parameters`` (preset, cache dtype, limits) as plain strings."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    triton = grpcclient.InferenceServerClient(url)
    try:
        config = triton.get_model_config(ENSEMBLE, as_json=True, client_timeout=timeout_s)
    except InferenceServerException as e:
        raise ServerError(f"cannot read the {ENSEMBLE!r} config at {url}: {e.message()}") from e
    finally:
        triton.close()
    params = config.get("config", {}).get("parameters", {})
    return {k: str(v.get("string_value", "")) for k, v in params.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("export.served_parity"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the server's gRPC endpoint host:port (default {DEFAULT_URL})")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="the checkpoint the served repository was exported from (default: the embedded small one)",
    )
    p.add_argument(
        "--requests",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="JSON lines, one request per line in the client's format; - for stdin; repeatable",
    )
    p.add_argument(
        "--random",
        type=int,
        default=None,
        metavar="N",
        help="fresh random requests to add (default: 8 without --requests, 0 with)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the random requests (default: fresh, printed)")
    p.add_argument(
        "--candidates", type=int, default=64, help="most candidates per random request (default: %(default)s)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds (default: 30)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    n_random: int = a.random if a.random is not None else (0 if a.requests else 8)
    if n_random < 0 or a.candidates < 1:
        print("error: --random must be >= 0 and --candidates >= 1", file=sys.stderr)
        return EXIT_USAGE
    seed: int = a.seed if a.seed is not None else secrets.randbelow(2**31)
    try:
        model = load_checkpoint(a.checkpoint)
        cfg = model.cfg
        labelled = [r for path in a.requests for r in read_requests(path)]
        labelled += random_requests(cfg, np.random.default_rng(seed), n_random, min(a.candidates, cfg.max_candidates))
        if not labelled:
            print("error: no requests: give --requests FILE or --random N (N >= 1)", file=sys.stderr)
            return EXIT_USAGE
        params = served_parameters(a.url, a.timeout)
        served_preset, cache_dtype = params.get("preset", ""), params.get("cache_dtype", "fp32")
        if served_preset and served_preset != cfg.name:
            print(
                f"error: {a.url} serves preset {served_preset!r}, but {a.checkpoint} is preset {cfg.name!r}: pass "
                "--checkpoint with the checkpoint the served repository was exported from (its provenance.json "
                "names it)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        served_sha, local_sha = params.get("checkpoint_sha256", ""), checkpoint_digest(a.checkpoint)
        if served_sha and served_sha != local_sha:
            print(
                f"error: {a.url} serves checkpoint sha256 {served_sha}, but {display_path(a.checkpoint)} is sha256 "
                f"{local_sha}: pass --checkpoint with the checkpoint the server was exported from",
                file=sys.stderr,
            )
            return EXIT_USAGE
        tol = TOLERANCES.get(cache_dtype, TOLERANCES["fp32"])
        given = len(labelled) - n_random
        print(
            f"served parity: {a.url} ({ENSEMBLE}, preset {served_preset or '?'}, {cache_dtype} cache) vs PyTorch "
            f"per-pair on {display_path(a.checkpoint)} (sha256 {local_sha[:12]}, "
            + ("the served one" if served_sha else "the server publishes none: exported before it did")
            + ")\n"
            f"requests: {given} given, {n_random} random (seed {seed}; replay with --seed {seed})",
            flush=True,
        )
        with AstroClient(a.url, timeout_s=a.timeout) as client:
            served = client.score_batch([r.request for r in labelled])
            tasks = client.get_spec().task_names
    except (RequestError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    reference = [reference_scores(model, r.request) for r in labelled]
    rows, problems = compare(served, reference, [r.source for r in labelled], tasks, tol)
    print(format_table(rows))
    if problems:
        print(
            "FAIL: " + "\n  ".join(problems) + "\n(if every request is far off, the server may serve another "
            "checkpoint than --checkpoint: its repository's provenance.json names the one it was exported from)"
        )
        return EXIT_FAIL
    print(f"PASS: {len(labelled)} requests, {sum(r.values for r in rows if r.output.startswith('scores'))} scores")
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
