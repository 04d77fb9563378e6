"""How one score becomes Triton calls, and how their answers become the scores (pure, no I/O).

:func:`plan_calls` makes every chunk of at most ``max_candidates`` candidates of every request a
``B=1`` call of its own; :func:`build_call_inputs` gives all chunks of a request the same encoder
inputs (:func:`encoder_inputs`), byte for byte; :func:`assemble_scores` puts every score back in
request order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from client.validation import I64, ScoreRequest
from contract.blocks import build_blocks
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, REQUEST_SCENARIO, REQUEST_TIMESTAMP
from contract.validation import HISTORY_FIELDS, HISTORY_TENSOR

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ChunkRow:
    """One Triton call, a batch of one row: candidates ``[start, stop)`` of request number ``request``."""

    request: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def split_evenly(n: int, limit: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into the fewest ``[start, stop)`` pieces of at most ``limit``, sizes within 1 of each other.

    Even pieces keep every call of a long list about the same size:
    1025 candidates with ``limit=1024`` become 513 + 512, not 1024 + 1.
    """
    if n < 1 or limit < 1:
        raise ValueError(f"split_evenly needs n >= 1 and limit >= 1, got n={n} limit={limit}")
    pieces = -(-n // limit)
    base, extra = divmod(n, pieces)
    bounds, start = [], 0
    for k in range(pieces):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def plan_calls(candidate_counts: Sequence[int], max_candidates: int) -> list[ChunkRow]:
    """The Triton calls for requests with ``candidate_counts`` candidates each: one ``B=1`` call per chunk.

    Every request's candidates are split by :func:`split_evenly` into chunks of at most
    ``max_candidates``; each chunk is a call of its own, in request order, then candidate order.
    Together the calls cover every candidate of every request exactly once.

    Why never several rows in one call (neither several users nor several chunks of one user):
    Triton's response cache on ``user_encoder`` keys on the bytes of the whole request it is given.
    Rows packed into one call make one key for the lot, which no later request repeats: no chunk
    can hit another, the next page of any of those users misses, and the encoder computes a user
    once per row of the call. A ``B=1`` call carries the user's own encoder inputs
    (:func:`encoder_inputs`), the same bytes on every chunk and on every later request with an
    unchanged history, so each of them after the first is a hit. Packing used to save RPCs; the
    server's dynamic batcher batches the single-row calls behind the cache lookup (same-shape
    requests share one ONNX Runtime run), and the clients keep ``max_in_flight`` calls in flight.
    """
    return [
        ChunkRow(i, start, stop)
        for i, n in enumerate(candidate_counts)
        for start, stop in split_evenly(n, max_candidates)
    ]


def encoder_inputs(request: ScoreRequest, spec: ServingSpec) -> dict[str, I64]:
    """``user_encoder``'s inputs of one request: history ``[1, Nb, Tb]`` and ``request_scenario`` ``[1, 1]``.

    The history is cut into blocks by ``spec``'s layout and behaviour vocabulary (the server's)
    at this user's own Tb (:func:`~contract.blocks.build_blocks`), so the tensors depend on the
    user's history, the scenario and the served layout alone, never on other requests: the same
    bytes in every chunk and in every later request of an unchanged history, which is what
    Triton's response cache needs for a hit. ``request`` must be validated.
    """
    blocks = build_blocks(request.history, spec)
    return {
        **{HISTORY_TENSOR[f]: getattr(blocks, f)[None] for f in HISTORY_FIELDS},
        REQUEST_SCENARIO: np.array([[request.scenario]], dtype=np.int64),
    }


def build_call_inputs(
    calls: Sequence[ChunkRow], requests: Sequence[ScoreRequest], spec: ServingSpec
) -> list[dict[str, I64]]:
    """The contract tensors of each call: history ``[1, Nb, Tb]``, request ``[1, 1]``, candidates ``[1, N]``.

    ``requests`` must be validated (:func:`~client.validation.validate_request`); ``calls`` come
    from :func:`plan_calls`. A request's :func:`encoder_inputs` are built once and shared by all
    of its chunks (the very same arrays); each chunk adds its own candidates, ``N`` = its size.
    """
    encoder: dict[int, dict[str, I64]] = {}
    out = []
    for row in calls:
        request = requests[row.request]
        if row.request not in encoder:
            encoder[row.request] = encoder_inputs(request, spec)
        out.append(
            {
                **encoder[row.request],
                REQUEST_TIMESTAMP: np.array([[request.timestamp]], dtype=np.int64),
                CANDIDATE_INPUT: np.asarray(request.candidates, dtype=np.int64)[None, row.start : row.stop],
            }
        )
    return out


def assemble_scores(
    calls: Sequence[ChunkRow], call_scores: Sequence[F32], candidate_counts: Sequence[int], n_tasks: int
) -> list[F32]:
    """Per-request ``[N_i, n_tasks]`` scores, in candidate order, from each call's ``[1, N, n_tasks]``."""
    out = [np.empty((n, n_tasks), dtype=np.float32) for n in candidate_counts]
    filled = [0] * len(candidate_counts)
    for row, scores in zip(calls, call_scores, strict=True):
        out[row.request][row.start : row.stop] = scores[0]
        filled[row.request] += row.size
    if filled != list(candidate_counts):
        raise AssertionError(f"call plan covered {filled} candidates, requests have {list(candidate_counts)}")
    return out
